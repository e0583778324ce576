"""Micro-batches for one rank, endless over epochs, with a resumable position.

The sampler decides which windows belong to this rank in each epoch (a permutation shared by all ranks
and dealt out in rank order, so the ``world × b`` windows of a global step are the ``world·b``
consecutive windows of a one-rank run). This stream only remembers how far into the epoch it is, so a
resumed run continues with exactly the next window.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from ..errors import UserError


def window_cells(batch: dict, history_frames: int, device=None, dtype=None):
    """The periodic box of each window of ``batch`` as box vectors [B, 3, 3] (Å, rows), or None for open
    systems: the cell of the last history frame (constant volume; in an NPT box the last observed one)."""
    cell = batch.get("cell")
    if cell is None:
        return None
    import torch

    from ..geometry import cell_matrix

    vectors = torch.from_numpy(cell_matrix(cell[:, history_frames - 1].double().cpu().numpy()))
    return vectors.to(device=device, dtype=dtype)


def box_keywords(batch: dict, history_frames: int, device=None, dtype=None) -> dict:
    """The model's keyword for the batch's box: ``{"cell": [B, 3, 3]}`` (:func:`window_cells`), or nothing for
    an open system (its forward is called exactly as before boxes existed)."""
    cell = window_cells(batch, history_frames, device, dtype)
    return {} if cell is None else {"cell": cell}


class BatchStream:
    """Endless micro-batches (dicts of tensors) drawn through ``sampler``; state = (epoch, position)."""

    def __init__(self, dataset, sampler, micro_batch_size: int, num_workers: int = 0, where: str = "train"):
        self.dataset, self.sampler = dataset, sampler
        self.micro_batch_size, self.num_workers = micro_batch_size, num_workers
        self.where = where
        self.epoch, self.position = 0, 0  # position: windows of this rank already consumed in this epoch
        self._iterator: Optional[Iterator[Any]] = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None

    def batches_per_epoch(self) -> int:
        return len(self.sampler) // self.micro_batch_size

    def _start(self) -> Iterator[Any]:
        from torch.utils.data import DataLoader

        self.sampler.set_epoch(self.epoch)
        indices = list(iter(self.sampler))[self.position:]
        loader = DataLoader(self.dataset, batch_size=self.micro_batch_size, sampler=indices, drop_last=True,
                            num_workers=self.num_workers, persistent_workers=False)
        return iter(loader)

    def next(self) -> dict:
        if self.batches_per_epoch() == 0:
            raise UserError(f"{self.where}: {len(self.sampler)} windows per rank is fewer than one micro-batch "
                            f"of {self.micro_batch_size}; use a smaller train.micro_batch_size or fewer ranks")
        for _ in range(2):
            if self._iterator is None:
                self._iterator = self._start()
            try:
                batch = next(self._iterator)
            except StopIteration:  # end of epoch: the next one starts from its beginning
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
                continue
            self.position += self.micro_batch_size
            return batch
        raise RuntimeError("unreachable: an epoch yielded no batch")
