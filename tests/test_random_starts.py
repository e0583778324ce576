"""Protocol A's random starts reproduce the peers' split index for index (GMN/EGNO MD17 code)."""

import numpy as np
import pytest

from asteroid_hpc.data.random_starts import RandomStartPlan, random_start_plan, random_start_split


def peers_split(n_frames, max_samples=(500, 2000, 2000), margin=10000, fractions=(0.1, 0.05, 0.05)):
    """The peers' split code, written as published: global seed, Python lists, fractions of the candidates
    drawn one after another, then the first ``max_samples`` of each kept."""
    x = np.zeros(n_frames)[:-1]
    np.random.seed(100)
    _x = x[margin:-margin]
    n = _x.shape[0]
    train_idx = np.random.choice(np.arange(n), size=int(fractions[0] * n), replace=False)
    flag = np.zeros(n)
    for i in train_idx:
        flag[i] = 1
    rest = [i for i in range(n) if not flag[i]]
    val_idx = np.random.choice(rest, size=int(fractions[1] * n), replace=False)
    for i in val_idx:
        flag[i] = 1
    rest = [i for i in range(n) if not flag[i]]
    test_idx = np.random.choice(rest, size=int(fractions[2] * n), replace=False)
    return [(idx + margin)[:keep] for idx, keep in zip((train_idx, val_idx, test_idx), max_samples)]


@pytest.mark.parametrize("n_frames", [211762, 60000])  # real MD17 aspirin's length; a 30 ps xTB file
def test_random_start_split_reproduces_the_peers_starts(n_frames):
    plan = random_start_plan(n_frames, before_frames=3375, after_frames=3000)
    assert not plan.scaled and plan.margin_frames == 10000
    ours = random_start_split(n_frames, plan)
    theirs = peers_split(n_frames)
    for name, want in zip(("train", "val", "test"), theirs):
        assert np.array_equal(ours[name], want), name
    assert [len(ours[name]) for name in ("train", "val", "test")] == [len(t) for t in theirs]
    everything = np.concatenate(list(ours.values()))
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 10000 and everything.max() < n_frames - 1 - 10000


def test_sixty_thousand_frames_keep_what_the_peers_keep():
    """On 60 000 frames the peers' 5 % draws hold 1 999 starts: that many, not the 2 000 asked for."""
    plan = random_start_plan(60000, before_frames=3375, after_frames=3000)
    assert plan.draw_sizes == (3999, 1999, 1999) and plan.kept_sizes == (500, 1999, 1999)
    assert "500/1999/1999" in plan.describe()


def test_drawing_only_the_kept_sizes_would_differ_from_the_peers():
    """The draw sizes matter: drawing 500/2000/2000 directly shares the train starts but few test starts."""
    n_frames = 60000
    plan = random_start_plan(n_frames, before_frames=3375, after_frames=3000)
    direct = random_start_split(n_frames, RandomStartPlan(plan.margin_frames, plan.sizes, False))
    exact = random_start_split(n_frames, plan)
    assert np.array_equal(direct["train"], exact["train"])
    shared = len(np.intersect1d(direct["test"], exact["test"]))
    assert shared < 200, shared
