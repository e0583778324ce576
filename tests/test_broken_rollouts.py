"""A rollout that came apart (non-finite coordinates) in a batch is isolated: the neighbour searches and the
model go on for the others, whose results are those they get alone."""

import numpy as np
import pytest
import torch

from asteroid_hpc.model.graph import radius_graph
from asteroid_hpc.model.neighbors import candidate_lists

CELL = torch.eye(3, dtype=torch.float64) * 12.0


def _two_systems():
    rng = np.random.default_rng(0)
    good = torch.as_tensor(rng.random((60, 3)) * 12.0)
    broken = good.clone()
    broken[7] = float("nan")
    return good, torch.stack([broken, good])


@pytest.mark.parametrize("cell", [None, CELL])
@pytest.mark.parametrize("search", ["radius_graph", "candidate_lists"])
def test_a_broken_system_gets_self_only_lists_and_the_others_are_unchanged(search, cell):
    good, batch = _two_systems()
    if search == "radius_graph":
        alone, both = radius_graph(good, 4.0, 12, cell=cell), radius_graph(batch, 4.0, 12, cell=cell)
    else:
        alone, both = candidate_lists(good[None], 4.0, cell=cell), candidate_lists(batch, 4.0, cell=cell)
    width = alone.index.shape[-1]
    assert torch.equal(both.index[1, :, :width], alone.index[0]) and torch.equal(both.mask[1, :, :width], alone.mask[0])
    assert not both.mask[1, :, width:].any()
    assert torch.equal(both.index[0], torch.arange(60).view(-1, 1).expand(60, both.index.shape[-1]))
    assert both.mask[0, :, 0].all() and not both.mask[0, :, 1:].any()
    if cell is not None:
        assert torch.equal(both.shift[1, :, :width], alone.shift[0]) and not both.shift[0].any()


def test_the_model_forecasts_the_others_when_one_system_came_apart():
    from asteroid_hpc.model import build_model
    from tests.support.tiny import tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config(attention="local_global", num_rbf=4, num_global_tokens=1,
                                          cutoff_angstrom=4.0)).eval()
    rng = np.random.default_rng(1)
    history = torch.as_tensor(rng.random((1, model.cfg.history_frames, 30, 3)) * 8.0, dtype=torch.float32)
    numbers = torch.full((30,), 6)
    broken = history.clone()
    broken[0, -1, 3] = float("inf")
    alone = model.forecast(history, numbers, 4)
    both = model.forecast(torch.cat([broken, history]), numbers, 4)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)
    assert not torch.isfinite(both[0]).all()
