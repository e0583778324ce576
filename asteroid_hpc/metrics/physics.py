"""Physical observables of trajectories (forecast or MD), for long-rollout checks: bonds, angles, radius of
gyration, clashes, the largest per-frame displacement, a finite-difference kinetic temperature and the
distance between all-pair interatomic distance distributions.

Frames are ``[F, N, 3]`` in Å (any float dtype; computed in float64). Pure NumPy/SciPy.

Conventions:

- Bonds: atom pairs closer than r_i + r_j + ``BOND_TOLERANCE_ANGSTROM`` (covalent radii of Cordero et al.
  2008) on one reference frame; noble gases take no bonds.
- Kinetic temperature: central finite differences v_t = (x_{t+1} − x_{t−1}) / (2 Δt) at the frame spacing
  Δt, the mass-weighted centre-of-mass velocity removed, T_t = Σ m v² / (k_B · dof), dof = 3N − 6 (an
  isolated molecule: no net momentum or angular momentum; 3N − 5 for two atoms) unless given. At a spacing
  of several fs the difference underestimates fast (C–H) motion: compare with the same estimator on MD at
  the same spacing, never with the thermostat's temperature.
- MD range of an observable: its ``RANGE_PERCENTILES`` (1st–99th) percentiles over the reference frames.
"""

from __future__ import annotations

import numpy as np

BOND_TOLERANCE_ANGSTROM = 0.45
CLASH_ANGSTROM = 0.8
RANGE_PERCENTILES = (1.0, 99.0)
# k_B in amu·Å²/(fs²·K): 1 amu·Å²/fs² = 1.66053906660e-17 J, k_B = 1.380649e-23 J/K
BOLTZMANN_AMU_A2_PER_FS2_K = 1.380649e-23 / 1.66053906660e-17

# covalent radii (Å), Cordero et al., Dalton Trans. 2008, Z = 1 … 36 (C sp3, Mn/Fe/Co low spin); index = Z
COVALENT_RADII_ANGSTROM = np.array([
    np.nan, 0.31, 0.28, 1.28, 0.96, 0.84, 0.76, 0.71, 0.66, 0.57, 0.58, 1.66, 1.41, 1.21, 1.11, 1.07, 1.05, 1.02,
    1.06, 2.03, 1.76, 1.70, 1.60, 1.53, 1.39, 1.39, 1.32, 1.26, 1.24, 1.32, 1.22, 1.22, 1.20, 1.19, 1.20, 1.20, 1.16])
# standard atomic weights (amu), Z = 1 … 36; index = Z
ATOMIC_MASSES_AMU = np.array([
    np.nan, 1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180, 22.990, 24.305, 26.982,
    28.085, 30.974, 32.06, 35.45, 39.948, 39.098, 40.078, 44.956, 47.867, 50.942, 51.996, 54.938, 55.845, 58.933,
    58.693, 63.546, 65.38, 69.723, 72.630, 74.922, 78.971, 79.904, 83.798])
NOBLE_GASES = (2, 10, 18, 36)


def _frames(frames) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, N, 3], got {list(frames.shape)}")
    return frames


def _table(table: np.ndarray, atomic_numbers, what: str) -> np.ndarray:
    z = np.asarray(atomic_numbers, dtype=np.int64)
    if z.size and (z.min() < 1 or z.max() >= len(table)):
        raise ValueError(f"{what} known for atomic numbers 1–{len(table) - 1}, got {sorted(set(z.tolist()))}")
    return table[z]


def masses_amu(atomic_numbers) -> np.ndarray:
    return _table(ATOMIC_MASSES_AMU, atomic_numbers, "atomic masses")


def detect_bonds(frame, atomic_numbers, tolerance_angstrom: float = BOND_TOLERANCE_ANGSTROM) -> np.ndarray:
    """Bonded pairs [B, 2] (i < j, sorted) of one frame [N, 3]: distance < r_i + r_j + tolerance."""
    from scipy.spatial import cKDTree

    frame = _frames(frame)[0]
    radii = _table(COVALENT_RADII_ANGSTROM, atomic_numbers, "covalent radii").copy()
    radii[np.isin(np.asarray(atomic_numbers), NOBLE_GASES)] = -np.inf
    if not np.isfinite(radii).any():
        return np.zeros((0, 2), dtype=np.int64)
    cutoff = 2 * radii[np.isfinite(radii)].max() + tolerance_angstrom
    pairs = cKDTree(frame).query_pairs(cutoff, output_type="ndarray").astype(np.int64)
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(pairs, axis=1)
    distance = np.linalg.norm(frame[pairs[:, 0]] - frame[pairs[:, 1]], axis=1)
    bonded = pairs[distance < radii[pairs[:, 0]] + radii[pairs[:, 1]] + tolerance_angstrom]
    return bonded[np.lexsort((bonded[:, 1], bonded[:, 0]))]


def angle_triples(bonds: np.ndarray) -> np.ndarray:
    """Bond angles [A, 3] (i, j, k) with j bonded to both i and k (i < k)."""
    neighbours: dict[int, list[int]] = {}
    for i, j in np.asarray(bonds, dtype=np.int64):
        neighbours.setdefault(int(i), []).append(int(j))
        neighbours.setdefault(int(j), []).append(int(i))
    triples = [(i, j, k) for j in sorted(neighbours) for i in sorted(neighbours[j]) for k in sorted(neighbours[j])
               if i < k]
    return np.array(triples, dtype=np.int64).reshape(-1, 3)


def bond_lengths(frames, bonds: np.ndarray) -> np.ndarray:
    """Lengths [F, B] in Å."""
    frames = _frames(frames)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    return np.linalg.norm(frames[:, bonds[:, 0]] - frames[:, bonds[:, 1]], axis=-1)


def bond_angles_degrees(frames, triples: np.ndarray) -> np.ndarray:
    """Angles i-j-k [F, A] in degrees."""
    frames = _frames(frames)
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    a = frames[:, triples[:, 0]] - frames[:, triples[:, 1]]
    b = frames[:, triples[:, 2]] - frames[:, triples[:, 1]]
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def radius_of_gyration(frames, atomic_numbers=None) -> np.ndarray:
    """Mass-weighted radius of gyration [F] in Å (unweighted without atomic numbers)."""
    frames = _frames(frames)
    weights = np.ones(frames.shape[1]) if atomic_numbers is None else masses_amu(atomic_numbers)
    weights = weights / weights.sum()
    centre = np.einsum("n,fnk->fk", weights, frames)
    return np.sqrt(np.einsum("n,fn->f", weights, ((frames - centre[:, None]) ** 2).sum(-1)))


def clash_counts(frames, bonds: np.ndarray, clash_angstrom: float = CLASH_ANGSTROM) -> np.ndarray:
    """Non-bonded atom pairs closer than ``clash_angstrom``, per frame [F] (float; NaN for a frame that is
    not a structure, so that a mean over rollouts with a broken one is NaN, i.e. out of any range)."""
    from scipy.spatial import cKDTree

    frames = _frames(frames)
    n_atoms = frames.shape[1]
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    bonded = set((bonds[:, 0] * n_atoms + bonds[:, 1]).tolist())
    counts = np.zeros(len(frames))
    for f, frame in enumerate(frames):
        if not np.isfinite(frame).all():
            counts[f] = np.nan  # not a structure
            continue
        pairs = cKDTree(frame).query_pairs(clash_angstrom, output_type="ndarray")
        if len(pairs):
            keys = np.minimum(pairs[:, 0], pairs[:, 1]) * n_atoms + np.maximum(pairs[:, 0], pairs[:, 1])
            counts[f] = sum(1 for key in keys.tolist() if key not in bonded)
    return counts


def max_displacement(frames, previous=None) -> np.ndarray:
    """The largest distance any atom moves between consecutive frames [F] in Å; the first frame is measured
    from ``previous`` [N, 3] (NaN without it). Non-finite frames give inf."""
    frames = _frames(frames)
    before = np.concatenate([_frames(previous), frames[:-1]]) if previous is not None else frames[:-1]
    step = np.linalg.norm(frames[len(frames) - len(before):] - before, axis=-1).max(axis=-1)
    step = np.where(np.isfinite(step), step, np.inf)
    return step if previous is not None else np.concatenate([[np.nan], step])


def degrees_of_freedom(n_atoms: int) -> int:
    """3N − 6 for an isolated molecule (3N − 5 for two atoms)."""
    return 3 * n_atoms - 5 if n_atoms == 2 else max(1, 3 * n_atoms - 6)


def kinetic_temperature(frames, atomic_numbers, frame_fs: float, dof: int | None = None) -> np.ndarray:
    """Finite-difference kinetic temperature [F − 2] in K of frames 1 … F−2 (see the module docstring)."""
    frames = _frames(frames)
    masses = masses_amu(atomic_numbers)
    velocity = (frames[2:] - frames[:-2]) / (2.0 * frame_fs)  # Å/fs
    velocity = velocity - np.einsum("n,fnk->fk", masses / masses.sum(), velocity)[:, None]
    dof = degrees_of_freedom(frames.shape[1]) if dof is None else dof
    return np.einsum("n,fnk->f", masses, velocity ** 2) / (dof * BOLTZMANN_AMU_A2_PER_FS2_K)


def kinetic_temperature_parts(frames, atomic_numbers, frame_fs: float, pairs: np.ndarray,
                              dof: int | None = None) -> np.ndarray:
    """:func:`kinetic_temperature` [F − 2] split by kind of motion, [F − 2, 3] in K: the part that changes the
    distances of ``pairs`` (bonds and angles, say), the rigid rotation, and the rest (torsions, out-of-plane,
    slow collective motion): :func:`asteroid_hpc.geometry.motion_parts`. Same dof, so the three add up to
    the total; a frozen rotor shows as a cold third part."""
    from ..geometry import motion_chunk_frames, motion_parts

    frames = _frames(frames)
    masses = masses_amu(atomic_numbers)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    kinetic = []
    chunk = motion_chunk_frames(len(pairs), frames.shape[1])
    for first in range(1, len(frames) - 1, chunk):  # every frame's Jacobian at once might not fit
        at = slice(first, min(first + chunk, len(frames) - 1))
        velocity = (frames[at.start + 1:at.stop + 1] - frames[at.start - 1:at.stop - 1]) / (2.0 * frame_fs)
        parts = motion_parts(frames[at], velocity, pairs, masses)
        kinetic.append(np.stack([np.einsum("n,fnk->f", masses, part ** 2) for part in parts], -1))
    dof = degrees_of_freedom(frames.shape[1]) if dof is None else dof
    return np.concatenate(kinetic or [np.zeros((0, 3))]) / (dof * BOLTZMANN_AMU_A2_PER_FS2_K)


def pair_distances(frames) -> np.ndarray:
    """All interatomic distances [F, N(N−1)/2] in Å."""
    frames = _frames(frames)
    i, j = np.triu_indices(frames.shape[1], k=1)
    return np.linalg.norm(frames[:, i] - frames[:, j], axis=-1)


def distribution_distance(sample, reference, bin_angstrom: float = 0.05) -> dict[str, float]:
    """How far the distribution of ``sample`` is from that of ``reference`` (flattened values, e.g. pair
    distances): the Wasserstein-1 distance (Å) and the Jensen–Shannon distance (base 2, 0 … 1) of their
    histograms on common ``bin_angstrom`` bins. Non-finite values are dropped."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    sample = np.asarray(sample, dtype=np.float64).ravel()
    reference = np.asarray(reference, dtype=np.float64).ravel()
    sample, reference = sample[np.isfinite(sample)], reference[np.isfinite(reference)]
    if not len(sample) or not len(reference):
        return {"wasserstein_angstrom": float("nan"), "jensen_shannon": float("nan")}
    top = min(max(sample.max(), reference.max()), reference.max() * 4 + 10.0)  # a blown-up tail in one last bin
    edges = np.arange(0.0, top + bin_angstrom, bin_angstrom)
    p = np.histogram(np.minimum(sample, top), edges)[0].astype(np.float64)
    q = np.histogram(np.minimum(reference, top), edges)[0].astype(np.float64)
    return {"wasserstein_angstrom": float(wasserstein_distance(sample, reference)),
            "jensen_shannon": float(jensenshannon(p, q, base=2))}


def md_range(values, percentiles: tuple[float, float] = RANGE_PERCENTILES) -> tuple[np.ndarray, np.ndarray]:
    """The MD range of an observable: its percentiles over the reference frames (axis 0)."""
    low, high = np.nanpercentile(np.asarray(values, dtype=np.float64), percentiles, axis=0)
    return low, high


def finite_mean(values) -> float:
    """The mean of the finite entries of ``values`` (e.g. clashes of the frames that are structures); NaN
    when there is none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def first_exit(series, low, high) -> int | None:
    """Index of the first row of ``series`` [T] or [T, K] outside [low, high] (any column; NaN counts as
    outside), None when it stays inside."""
    series = np.asarray(series, dtype=np.float64)
    outside = ~((series >= low) & (series <= high))
    if outside.ndim > 1:
        outside = outside.reshape(len(outside), -1).any(axis=1)
    hits = np.flatnonzero(outside)
    return int(hits[0]) if len(hits) else None
