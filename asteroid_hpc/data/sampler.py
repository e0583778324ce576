"""Deterministic, resumable partition of a dataset's windows across ranks."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class DistributedWindowSampler(Sampler[int]):
    """Rank ``rank``'s share of a permutation of ``range(len(dataset))`` shared by all ranks.

    The permutation depends only on ``seed`` and the epoch (:meth:`set_epoch`), not on the world size;
    it is dealt out in rank order (rank r takes positions r, r + W, r + 2W, ...), so the shares are
    disjoint and equal, and the W·b windows of one global step are W·b consecutive windows of the
    permutation. ``drop_last`` drops the tail that does not divide evenly; otherwise the permutation is
    padded by repeating its head. ``len(sampler)`` is the full share of an epoch.

    Resuming mid-epoch: :meth:`state_dict` gives ``{"epoch", "position"}`` where ``position`` counts the
    indices handed out in this epoch (pass ``consumed=`` when a DataLoader prefetches ahead of what was
    trained on); after :meth:`load_state_dict` the next iteration starts at that position.
    """

    def __init__(self, dataset, rank: int, world_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.n = len(dataset)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_samples = self.n // world_size if drop_last else math.ceil(self.n / world_size)
        self.total_size = self.num_samples * world_size
        self.epoch = 0
        self.position = 0
        self._resume_at = 0

    def _share(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        if self.total_size > len(order) and order:
            order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        return order[: self.total_size][self.rank:: self.world_size]

    def __iter__(self) -> Iterator[int]:
        share = self._share()
        start, self._resume_at = self._resume_at, 0
        self.position = start
        for index in share[start:]:
            self.position += 1
            yield index

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self._resume_at = int(epoch), 0, 0

    def state_dict(self, consumed: int | None = None) -> dict:
        return {"epoch": self.epoch, "position": self.position if consumed is None else int(consumed)}

    def load_state_dict(self, state: dict) -> None:
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"sampler position {position} is outside this rank's share of {self.num_samples}")
        self.epoch, self.position, self._resume_at = int(state["epoch"]), position, position
