"""Periodic boxes in the ensemble: the initial condition's box, what member files hold, bonds across the faces,
and wrapped files read back as continuous trajectories.

- The box of a run is the cell of the initial trajectory's last starting frame (``ensemble.start_frame``): the
  model keeps it for the whole forecast (constant volume; in an NPT trajectory the last observed box).
- The rollout itself is continuous (unwrapped): the model makes every frame of a window continuous with its
  last one, and its forecasts continue from there. Only what is written is wrapped (:class:`OutputWrap`):
  ``ensemble.output_wrap=molecules`` puts every molecule whole with its centre (mean position) in the box, as MD
  engines write (molecules from the topology's bonds when ``--topology`` gives them, else each atom alone);
  ``none`` writes the continuous coordinates (for MSD and diffusion). A run continued after a kill starts from
  the written frames: bit for bit the uninterrupted run with ``none``; with ``molecules`` equal within the
  float32 rounding of the wrapped coordinates (about 1e-6 Å), since the model only sees relative vectors.
- The summary reads member files (wrapped or not) back as continuous trajectories from their starting frame
  (:class:`ContinuousReader`), so the ensemble mean, the spread and the scores never see a jump across a face.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.readers import ReaderView
from ..errors import user_error
from ..geometry import cell_matrix

OUTPUT_WRAPS = ("molecules", "none")


def box_of(cell: Optional[np.ndarray], path, frame: int) -> Optional[np.ndarray]:
    """The checked cell [6] (lengths Å, angles °) of one frame's ``cell`` ([1, 6] or None, as a reader returns
    it), or None when the frame has none (an open system)."""
    from ..data.cells import cell_missing, check_cell_values

    if cell is None or cell_missing(cell[:1])[0]:
        return None
    check_cell_values(cell[:1], [frame], path)
    return np.asarray(cell[0], dtype=np.float64)


def describe_box(cell: np.ndarray) -> str:
    return (f"periodic box {cell[0]:g} x {cell[1]:g} x {cell[2]:g} A, angles {cell[3]:g} {cell[4]:g} "
            f"{cell[5]:g} degrees")


def image_counts(vectors: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The whole lattice vectors (counts n, float64) with ``vectors - n @ H`` the minimum images (exact for a
    vector shorter than half the box's shortest width)."""
    return np.rint(vectors @ inverse)


class OutputWrap:
    """Coordinates as member files hold them (module doc): ``mode`` "molecules" or "none"; ``cell`` [6] Å/°;
    ``bonds`` [B, 2] of the written atoms (None or empty: every atom is its own molecule)."""

    def __init__(self, mode: str, cell: np.ndarray, n_atoms: int, bonds: Optional[np.ndarray] = None):
        from ..data.unwrap import spanning_parents
        from ..metrics.liquid import molecule_labels

        if mode not in OUTPUT_WRAPS:
            raise ValueError(f"output wrap must be one of {OUTPUT_WRAPS}, got {mode!r}")
        self.mode, self.cell = mode, np.asarray(cell, dtype=np.float64)
        self.vectors = cell_matrix(self.cell)
        self.inverse = np.linalg.inv(self.vectors)
        bonds = np.empty((0, 2), np.int64) if bonds is None else np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.parents = spanning_parents(n_atoms, bonds) if len(bonds) else None
        self.labels = molecule_labels(bonds, n_atoms) if len(bonds) else np.arange(n_atoms)
        self.sizes = np.bincount(self.labels).astype(np.float64)

    def cell_arrays(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell_lengths, cell_angles) [F, 3] for the AMBER writer."""
        return np.tile(self.cell[:3], (n_frames, 1)), np.tile(self.cell[3:], (n_frames, 1))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Frames [F, N, 3] as written (float32)."""
        if self.mode == "none":
            return np.asarray(frames, dtype=np.float32)
        x = np.asarray(frames, dtype=np.float64)
        if self.parents is not None:  # each atom at the minimum image of its tree parent: molecules whole
            from ..data.unwrap import path_sums

            counts = image_counts(x - x[:, self.parents], self.inverse).astype(np.int64)
            placed = np.stack([path_sums(self.parents, c) for c in counts])
            x = x - placed.astype(np.float64) @ self.vectors
        centres = np.stack([np.stack([np.bincount(self.labels, f[:, k], len(self.sizes)) for k in range(3)], -1)
                            for f in x]) / self.sizes[:, None]  # [F, M, 3]
        shift = np.floor(centres @ self.inverse) @ self.vectors  # each molecule's centre into [0, 1) fractions
        return (x - shift[:, self.labels]).astype(np.float32)


class ContinuousReader(ReaderView):
    """A reader whose frames, read in order (``read(a, b)`` then ``read(b, c)`` ...), come back continuous in
    time from ``previous`` [N, 3] (the frame before the first one read): every step is made a minimum image in
    the box ``cell`` [6]. Frames already continuous come back unchanged, bit for bit."""

    def __init__(self, reader, previous: np.ndarray, cell: np.ndarray):
        super().__init__(reader)
        self.vectors = cell_matrix(np.asarray(cell, dtype=np.float64))
        self.inverse = np.linalg.inv(self.vectors)
        self.previous_raw = np.asarray(previous, dtype=np.float64)
        self.counts = np.zeros(self.previous_raw.shape, dtype=np.float64)  # lattice vectors taken off so far
        self.next_frame: Optional[int] = None

    def read(self, start: int, stop: int):
        from dataclasses import replace

        if self.next_frame is not None and start != self.next_frame:
            raise ValueError(f"continuous reading goes in order: frame {self.next_frame} next, not {start}")
        chunk = self.reader.read(start, stop)
        raw = np.asarray(chunk.coordinates, dtype=np.float64)
        if not len(raw):
            return chunk
        steps = np.diff(np.concatenate([self.previous_raw[None], raw]), axis=0)
        counts = self.counts + np.cumsum(image_counts(np.nan_to_num(steps), self.inverse), axis=0)
        self.previous_raw, self.counts, self.next_frame = raw[-1], counts[-1], start + len(raw)
        if not counts.any():
            return chunk
        coordinates = (raw - counts @ self.vectors).astype(chunk.coordinates.dtype)
        return replace(chunk, coordinates=coordinates)


def periodic_bonds(frame: np.ndarray, atomic_numbers, cell: np.ndarray,
                   tolerance_angstrom: Optional[float] = None) -> np.ndarray:
    """Bonded pairs [B, 2] (i < j, sorted) of one frame [N, 3] by minimum-image distance in the box ``cell`` [6]:
    :func:`asteroid_hpc.metrics.physics.detect_bonds`'s rule (covalent radii + tolerance) across the faces."""
    from MDAnalysis.lib.distances import self_capped_distance

    from ..metrics import physics

    tolerance = physics.BOND_TOLERANCE_ANGSTROM if tolerance_angstrom is None else tolerance_angstrom
    z = np.asarray(atomic_numbers, dtype=np.int64)
    radii = physics.COVALENT_RADII_ANGSTROM[z].copy()
    radii[np.isin(z, physics.NOBLE_GASES)] = -np.inf
    if not np.isfinite(radii).any():
        return np.zeros((0, 2), dtype=np.int64)
    cutoff = 2 * radii[np.isfinite(radii)].max() + tolerance
    pairs, distance = self_capped_distance(np.asarray(frame, dtype=np.float32), cutoff,
                                           box=np.asarray(cell, dtype=np.float32))
    pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    bonded = pairs[distance < radii[pairs[:, 0]] + radii[pairs[:, 1]] + tolerance]
    return bonded[np.lexsort((bonded[:, 1], bonded[:, 0]))]


def minimum_image_steps(frames: np.ndarray, previous: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Distances [F, N] each atom moved from the frame before (the first from ``previous``) by minimum image."""
    vectors = cell_matrix(np.asarray(cell, dtype=np.float64))
    before = np.concatenate([np.asarray(previous, dtype=np.float64)[None], frames[:-1]])
    steps = frames - before
    steps = steps - image_counts(np.nan_to_num(steps), np.linalg.inv(vectors)) @ vectors
    return np.linalg.norm(np.where(np.isfinite(frames - before), steps, np.inf), axis=-1)


def check_box(cell: Optional[np.ndarray], path, model) -> None:
    """A periodic model given an open input, or an open model given a periodic one: the model's one line."""
    signature = getattr(model, "data_signature", None) or {}
    if "periodic" not in signature or bool(signature["periodic"]) == (cell is not None):
        return
    raise user_error(path, "this model was trained on periodic systems: it needs the input's cell (box vectors), "
                           "and this file has none" if cell is None else
                     "this model was trained on open systems (no periodic box): it cannot forecast this periodic "
                     "system; train one on periodic data")
