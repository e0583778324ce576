"""Observables of periodic systems (liquids, solvated proteins), for long-rollout checks against MD: radial
distribution functions, minimum-image pair lengths (bonds, constraints), the mean-squared displacement and
the self-diffusion coefficient.

Frames are ``[F, N, 3]`` in Å; a cell is ``[6]`` or per frame ``[F, 6]``: lengths (Å) and angles (°), as
AMBER NetCDF and MDAnalysis give it (orthorhombic or triclinic). Distances under periodic boundaries come
from MDAnalysis's minimum-image routines (exact for triclinic boxes), imported when first needed.

Conventions:

- g(r): pairs within ``r_max`` counted per frame in shells of ``bin_angstrom`` and divided by the ideal-gas
  count at that frame's density; averaged over frames. ``r_max`` must not exceed half the box's shortest
  perpendicular width (beyond it an atom's neighbours are not all within one image).
- The RDF distance between two g(r) is their mean absolute difference over the shells up to ``r_max`` (the
  L1 distance ∫|Δg| dr divided by ``r_max``: 0 for equal structure, about 1 between a liquid and an ideal gas).
- Self-diffusion: D = slope / 6 of the mean-squared displacement of *unwrapped* coordinates, averaged over
  time origins and atoms, with the whole system's centre-of-mass drift removed; reported in Å²/ps
  (1 Å²/ps = 10⁻⁴ cm²/s).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BIN_ANGSTROM = 0.02
# the first peak of g(r) is searched from here on (below it g is ~0 for any real liquid)
PEAK_SEARCH_FROM_ANGSTROM = 1.0


def _cells(cell, n_frames: int) -> np.ndarray:
    cells = np.asarray(cell, dtype=np.float64)
    cells = np.broadcast_to(cells, (n_frames, 6)) if cells.ndim == 1 else cells
    if cells.shape != (n_frames, 6):
        raise ValueError(f"cell must be [6] or [{n_frames}, 6] (lengths Å, angles °), got {list(cells.shape)}")
    return cells


def box_volume(cell) -> float:
    """Volume (Å³) of a cell [6]."""
    from MDAnalysis.lib.mdamath import box_volume as mda_box_volume
    return float(mda_box_volume(np.asarray(cell, dtype=np.float64)))


def half_shortest_width(cell) -> float:
    """Half the shortest perpendicular width (Å) of a cell [6]: the largest radius the minimum image covers."""
    from MDAnalysis.lib.mdamath import triclinic_vectors
    a, b, c = triclinic_vectors(np.asarray(cell, dtype=np.float64)).astype(np.float64)
    volume = abs(np.dot(a, np.cross(b, c)))
    return 0.5 * min(volume / np.linalg.norm(np.cross(b, c)), volume / np.linalg.norm(np.cross(c, a)),
                     volume / np.linalg.norm(np.cross(a, b)))


def radial_distribution(frames, cell, group_a, group_b=None, r_max: float = 8.0,
                        bin_angstrom: float = DEFAULT_BIN_ANGSTROM) -> tuple[np.ndarray, np.ndarray]:
    """g(r) between atoms ``group_a`` and ``group_b`` (index arrays; ``group_b=None``: within ``group_a``,
    each pair once) of ``frames`` [F, N, 3] in a periodic ``cell``. Returns (shell centres [K], g [K])."""
    from MDAnalysis.lib.distances import capped_distance, self_capped_distance
    x = np.asarray(frames, dtype=np.float64)
    cells = _cells(cell, len(x))
    if r_max > min(half_shortest_width(c) for c in cells) + 1e-9:
        raise ValueError(f"r_max {r_max} Å exceeds half the box's shortest width")
    edges = np.arange(0.0, r_max + 0.5 * bin_angstrom, bin_angstrom)
    a = np.asarray(group_a)
    counts = np.zeros(len(edges) - 1)
    ideal = 0.0
    for frame, box in zip(x, cells):
        if group_b is None:
            _, dist = self_capped_distance(frame[a], r_max, box=box.astype(np.float32))
            pairs = len(a) * (len(a) - 1) / 2
        else:
            b = np.asarray(group_b)
            _, dist = capped_distance(frame[a], frame[b], r_max, box=box.astype(np.float32))
            dist = dist[dist > 0]  # an atom in both groups is not its own neighbour
            pairs = len(a) * len(b) - len(np.intersect1d(a, b))
        counts += np.histogram(dist, bins=edges)[0]
        ideal += pairs / box_volume(box)
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return 0.5 * (edges[1:] + edges[:-1]), counts / (ideal * shells)


def first_peak(r: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """(position Å, height) of the first maximum of g(r): the highest point before g first falls back below 1
    after rising above it (the first coordination shell)."""
    r, g = np.asarray(r), np.asarray(g)
    search = r >= PEAK_SEARCH_FROM_ANGSTROM
    above = np.flatnonzero(search & (g > 1.0))
    if not len(above):
        k = int(np.argmax(np.where(search, g, -np.inf)))
        return float(r[k]), float(g[k])
    start = above[0]
    below = np.flatnonzero(g[start:] < 1.0)
    stop = start + (below[0] if len(below) else len(g) - start)
    k = start + int(np.argmax(g[start:stop]))
    return float(r[k]), float(g[k])


def rdf_comparison(r: np.ndarray, g_forecast: np.ndarray, g_reference: np.ndarray) -> dict[str, float]:
    """How one g(r) differs from a reference on the same shells: L1 distance (module doc), first-peak positions
    and heights and the relative height error."""
    width = float(r[1] - r[0]) if len(r) > 1 else 1.0
    l1 = float(np.abs(np.asarray(g_forecast) - np.asarray(g_reference)).sum() * width / (r[-1] + width / 2))
    peak_r, peak_g = first_peak(r, g_forecast)
    ref_r, ref_g = first_peak(r, g_reference)
    return {"l1": l1, "peak_position_angstrom": peak_r, "reference_peak_position_angstrom": ref_r,
            "peak_height": peak_g, "reference_peak_height": ref_g,
            "peak_height_relative_error": (peak_g - ref_g) / ref_g}


def periodic_pair_lengths(frames, pairs: np.ndarray, cell) -> np.ndarray:
    """Minimum-image lengths [F, P] (Å) of atom ``pairs`` [P, 2] in each frame (bonds, constraints)."""
    from MDAnalysis.lib.distances import calc_bonds
    x = np.asarray(frames, dtype=np.float64)
    cells = _cells(cell, len(x))
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.stack([calc_bonds(frame[pairs[:, 0]], frame[pairs[:, 1]], box=box)
                     for frame, box in zip(x, cells)]) if len(pairs) else np.zeros((len(x), 0))


def mean_squared_displacement(unwrapped, lags, atoms=None) -> np.ndarray:
    """MSD (Å²) at each of ``lags`` (frames, ≥ 1) of ``unwrapped`` [F, N, 3] coordinates, averaged over every time
    origin and over ``atoms`` (default all), after removing the centre-of-mass (mean position) drift of the
    whole system."""
    x = np.asarray(unwrapped, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x = x if atoms is None else x[:, np.asarray(atoms)]
    lags = np.asarray(lags, dtype=np.int64)
    if len(lags) and (lags.min() < 1 or lags.max() >= len(x)):
        raise ValueError(f"lags must lie in 1 … {len(x) - 1} frames")
    return np.array([np.mean(np.sum((x[lag:] - x[:-lag]) ** 2, axis=-1)) for lag in lags])


def msd_lags(n_frames: int, count: int = 100) -> np.ndarray:
    """At most ``count`` lags (frames) spread evenly over 1 … ``n_frames`` − 1."""
    return np.unique(np.linspace(1, n_frames - 1, min(count, n_frames - 1)).round().astype(np.int64))


def diffusion_coefficient(lag_ps, msd, fit_from: float = 0.2) -> float:
    """Self-diffusion coefficient (Å²/ps) from an MSD curve at ``lag_ps``: slope / 6 of a least-squares line over
    the lags from a fraction ``fit_from`` of the longest on (skipping the short-time ballistic part)."""
    lag_ps, msd = np.asarray(lag_ps, dtype=np.float64), np.asarray(msd, dtype=np.float64)
    pick = lag_ps >= fit_from * lag_ps.max()
    if pick.sum() < 2:
        raise ValueError("too few lags to fit a diffusion coefficient")
    return float(np.polyfit(lag_ps[pick], msd[pick], 1)[0] / 6.0)


def molecule_labels(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """The molecule (connected component of the bond graph) of every atom [N]; numbered from 0."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n_atoms, n_atoms))
    return connected_components(graph, directed=False)[1]


def water_molecules(bonds: np.ndarray, atomic_numbers) -> np.ndarray:
    """[W, 3] atom indices (O, H, H) of every water: a molecule of exactly one O and two H, both bonded to it."""
    z = np.asarray(atomic_numbers)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    labels = molecule_labels(bonds, len(z))
    sizes = np.bincount(labels)
    oxygens = np.flatnonzero((z == 8) & (sizes[labels] == 3))
    partners = {int(o): [] for o in oxygens}
    for i, j in bonds:
        if int(i) in partners and z[j] == 1:
            partners[int(i)].append(int(j))
        elif int(j) in partners and z[i] == 1:
            partners[int(j)].append(int(i))
    rows = [[o, *hs] for o, hs in partners.items() if len(hs) == 2]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def excluded_pairs(bonds: np.ndarray) -> set[tuple[int, int]]:
    """Atom pairs (i < j) one or two bonds apart: they sit close by construction and are never a clash."""
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    neighbours: dict[int, set[int]] = {}
    for i, j in bonds:
        neighbours.setdefault(int(i), set()).add(int(j))
        neighbours.setdefault(int(j), set()).add(int(i))
    pairs = {(min(i, j), max(i, j)) for i, j in bonds.tolist()}
    for centre in neighbours.values():
        ends = sorted(centre)
        pairs |= {(a, b) for k, a in enumerate(ends) for b in ends[k + 1:]}
    return pairs


def periodic_clash_counts(frames, cell, excluded: set[tuple[int, int]], clash_angstrom: float) -> np.ndarray:
    """Per frame [F] (float): pairs closer than ``clash_angstrom`` (minimum image) that are not ``excluded``; NaN for
    a frame that is not a structure (non-finite), so that a mean over it is out of any range."""
    from MDAnalysis.lib.distances import self_capped_distance

    x = np.asarray(frames, dtype=np.float64)
    cells = _cells(cell, len(x))
    counts = np.full(len(x), np.nan)
    for f, (frame, box) in enumerate(zip(x, cells)):
        if np.isfinite(frame).all():
            close, _ = self_capped_distance(frame, clash_angstrom, box=box.astype(np.float32))
            counts[f] = sum((int(i), int(j)) not in excluded for i, j in np.sort(close, axis=1))
    return counts


def detect_periodic_bonds(frame, atomic_numbers, cell, tolerance_angstrom: float) -> np.ndarray:
    """Bonds [B, 2] (i < j) of one frame in a periodic ``cell``: pairs closer (minimum image) than the sum of their
    covalent radii plus ``tolerance_angstrom``, as :func:`asteroid_hpc.metrics.physics.detect_bonds` on open systems."""
    from MDAnalysis.lib.distances import self_capped_distance

    from .physics import COVALENT_RADII_ANGSTROM, NOBLE_GASES

    z = np.asarray(atomic_numbers)
    radii = COVALENT_RADII_ANGSTROM[z]
    reach = 2 * float(np.nanmax(radii)) + tolerance_angstrom
    pairs, dist = self_capped_distance(np.asarray(frame, dtype=np.float64), reach,
                                       box=np.asarray(cell, dtype=np.float32))
    pairs = np.sort(pairs, axis=1)
    bonded = dist < radii[pairs[:, 0]] + radii[pairs[:, 1]] + tolerance_angstrom
    bonded &= ~np.isin(z[pairs], NOBLE_GASES).any(axis=1)
    return pairs[bonded][np.lexsort((pairs[bonded][:, 1], pairs[bonded][:, 0]))].astype(np.int64)
