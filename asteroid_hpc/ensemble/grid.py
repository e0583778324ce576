"""The process grid: member groups × domains, and the deterministic division of members among groups.

World rank r belongs to group ``r // domains`` and is domain ``r % domains`` of it. Member k is run by
group ``k % groups`` (round robin), whatever the timing, so a re-run on the same grid gives every member
to the same ranks, and any grid gives every member the same trajectory (its random stream depends on
the seed and the member index only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class ProcessGrid:
    world_size: int
    rank: int
    domains: int  # ranks per member

    def __post_init__(self) -> None:
        if self.world_size % self.domains:
            raise UserError(f"ensemble.domains={self.domains} does not divide the {self.world_size} ranks of the job")

    @property
    def groups(self) -> int:
        return self.world_size // self.domains

    @property
    def group(self) -> int:
        return self.rank // self.domains

    @property
    def domain(self) -> int:
        return self.rank % self.domains

    def group_root(self, group: int) -> int:
        """World rank of domain 0 of ``group`` (it writes that group's member files)."""
        return group * self.domains

    def members_of(self, group: int, members: int) -> list[int]:
        return list(range(group, members, self.groups))


def parse_grid(text: str, world_size: int) -> int:
    """``--grid GROUPSxDOMAINS`` -> domains, checked against the job's size."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise UserError(f"--grid must be MEMBER_GROUPSxDOMAINS, e.g. 2x1 (got {text!r})")
    groups, domains = int(match[1]), int(match[2])
    if groups < 1 or domains < 1 or groups * domains != world_size:
        raise UserError(f"--grid {groups}x{domains} needs {groups * domains} ranks, the job has {world_size}")
    return domains


def split_group(world, grid: ProcessGrid):
    """The communicator of this rank's member group (same interface as ``world()``)."""
    from ..runtime.mpi import MPIWorld, SingleProcess

    if grid.domains == 1 or world.comm is None:
        return SingleProcess()
    return MPIWorld(world.comm.Split(color=grid.group, key=grid.rank))
