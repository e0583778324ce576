"""tools/static_bound.py: the oracle mean structure placed on the history mean, against the history mean,
on a trajectory whose answer is known."""

import importlib.util
import subprocess
import sys

import numpy as np

from tests.support.cli import REPO, cli_env


def _tool():
    spec = importlib.util.spec_from_file_location("static_bound", REPO / "tools" / "static_bound.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _noisy_rigid_molecule(path, frames: int, sigma: float, seed: int = 0):
    """A fixed structure that turns very slowly, every frame jittered by independent noise of ``sigma`` Å per
    coordinate: no motion to predict, so the best forecast is the structure itself, where it is."""
    from scipy.spatial.transform import Rotation

    from asteroid_hpc.data.amber import AmberWriter

    rng = np.random.default_rng(seed)
    structure = rng.normal(scale=1.5, size=(5, 3))
    turns = Rotation.from_rotvec(np.outer(np.arange(frames), [0.0, 0.0, 1e-7])).as_matrix()
    positions = structure @ turns.transpose(0, 2, 1) + rng.normal(scale=sigma, size=(frames, 5, 3))
    with AmberWriter(path, n_atoms=5, atomic_numbers=[6, 6, 8, 7, 6], timestep_ps=0.0005) as writer:
        writer.append(positions.astype(np.float32), np.arange(frames) * 0.0005)
    return path


def test_the_oracle_structure_is_below_the_history_mean_by_what_averaging_leaves(tmp_path):
    sigma = 0.1
    path = _noisy_rigid_molecule(tmp_path / "jitter.nc", 40_000, sigma)
    report = _tool().static_bound(path, history_frames=10, a_history_stride=75, frames=(20_000, 40_000))
    history_mean, oracle = report["scores"]["history mean"], report["scores"]["mean structure on the history mean"]
    # per coordinate: the target's noise σ² plus the 10-frame mean's σ²/10 (history mean); for the oracle (the
    # whole stretch's mean, placed by the history mean's pose) only the part of σ²/10 the pose carries: its 6
    # rigid degrees of freedom of the 15 coordinates
    expected_history_mean, expected_oracle = 1.1 * sigma ** 2, (1 + 0.1 * 6 / 15) * sigma ** 2
    for lead in ("s2s", "s2t"):
        np.testing.assert_allclose(history_mean[lead], expected_history_mean, rtol=0.1)
        np.testing.assert_allclose(oracle[lead], expected_oracle, rtol=0.1)
        assert 0.035 < report["below_history_mean"][lead] < 0.075  # 1 − 1.04 / 1.1 = 5.5 %
    assert report["oracle"] and report["structure_frames"] == [20_000, 40_000]
    # the structure of earlier frames (what a forecast could know): the same structure here, the same score
    earlier = _tool().static_bound(path, history_frames=10, a_history_stride=75, frames=(20_000, 40_000),
                                   structure_frames=(0, 20_000))
    assert not earlier["oracle"]
    np.testing.assert_allclose(earlier["scores"]["mean structure on the history mean"]["s2t"], oracle["s2t"], rtol=0.02)
    assert report["starts"] > 100


def test_a_stretch_without_test_starts_is_one_line(tmp_path):
    path = _noisy_rigid_molecule(tmp_path / "jitter.nc", 30_000, 0.1)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "static_bound.py"), str(path), "--frames", "0", "100"],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "jitter.nc" in proc.stderr and "a_frames" in proc.stderr, proc.stderr
