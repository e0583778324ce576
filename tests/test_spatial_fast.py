"""The fast spatial attention (one gather, element-wise contractions, heads-leading softmax) computes the
same function as the einsum formulation it replaced (kept in asteroid_hpc.model.spatial_reference), and the
FLOP count still counts that formulation's products."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from asteroid_hpc.config.schema import ModelConfig
from asteroid_hpc.model import build_model, load_weights, merge_softmax_partials, model_summary
from asteroid_hpc.model.graph import radius_graph
from asteroid_hpc.model.spatial import SpatialBlock, local_reduce
from asteroid_hpc.model.spatial_reference import count_flops, counted_formulation

FIXTURES = Path(__file__).parent / "fixtures"
CELL = torch.diag(torch.tensor([9.0, 8.0, 10.0]))


def block_inputs(frames: int = 3, n_atoms: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(frames, n_atoms, 16, generator=gen)
    positions = torch.rand(frames, n_atoms, 3, generator=gen) * torch.tensor([9.0, 8.0, 10.0])
    return h, positions


def both(fn):
    """(fast result, reference result) of ``fn()``."""
    fast = fn()
    with counted_formulation():
        reference = fn()
    return fast, reference


@pytest.mark.parametrize("global_tokens", [0, 3])
@pytest.mark.parametrize("kind", ["local", "local_periodic", "full", "full_periodic"])
def test_block_fast_path_equals_einsum_formulation(kind, global_tokens):
    torch.manual_seed(1)
    block = SpatialBlock(16, 2, 6, 3.0, global_tokens, 0.0).eval()
    h, positions = block_inputs()
    cell = CELL.expand(len(h), 3, 3) if kind.endswith("periodic") else None
    graph = radius_graph(positions, 3.0, 12, cell=cell) if kind.startswith("local") else None
    if kind == "local_periodic":
        assert graph.shift.abs().sum() > 0  # some pairs do cross the faces
    run = lambda: block(h, positions, graph, return_vectors=True, cell=None if graph is not None else cell)
    (fast, fast_vectors), (ref, ref_vectors) = both(run)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    assert torch.allclose(fast_vectors, ref_vectors, atol=1e-5, rtol=0)
    assert fast_vectors.abs().max() > 0.1


def test_the_global_gather_in_float32_equals_the_float64_one_full_attention_uses_it():
    """Full attention (never split into domains) gathers the global tokens with float32 sums; the local path
    keeps float64 (domains merge their partial sums). The two agree to float32 rounding."""
    torch.manual_seed(2)
    block = SpatialBlock(16, 2, 6, 3.0, 3, 0.0).eval()
    h, _ = block_inputs()
    keys, values = block._heads(block.key(h)), block._heads(block.value(h))
    exact = block._gather_global(keys, values, None, local_reduce)
    fast = block._gather_global(keys, values, None, local_reduce, exact_sums=False)
    for a, b in zip(exact, fast):
        assert torch.allclose(a, b, atol=1e-6, rtol=0) and a.abs().max() > 0.1


def test_full_pairs_are_the_minimum_images_and_their_radial_basis():
    """What full attention (fast path and reference alike) takes from :func:`full_pairs`, checked directly."""
    from asteroid_hpc.model.spatial import full_pairs

    block = SpatialBlock(16, 2, 6, 3.0, 0, 0.0)
    _, positions = block_inputs()
    box = torch.tensor([9.0, 8.0, 10.0])
    for cell in (None, CELL.expand(len(positions), 3, 3)):
        pairs = full_pairs(positions, cell, block.rbf)
        expected = positions.unsqueeze(1) - positions.unsqueeze(2)  # [S, i, j]: x_j − x_i
        if cell is not None:  # orthorhombic: each component to its nearest image
            expected = expected - box * torch.round(expected / box)
        assert torch.allclose(pairs.relative, expected, atol=1e-5)
        distance = expected.norm(dim=-1)
        centres = torch.linspace(0.0, 3.0, 6).view(-1, 1, 1, 1)
        radial = torch.exp(-block.rbf.gamma * (distance.unsqueeze(0) - centres) ** 2)
        assert torch.allclose(pairs.radial, radial, atol=1e-6)
        # open boundaries carry the positions (Σ α (x_j − x_i) from them); a box does not (minimum images)
        assert pairs.positions is positions if cell is None else pairs.positions is None


def test_block_blocks_of_atoms_masks_and_domain_statistics(monkeypatch):
    """Several atom blocks per frame (BLOCK_ROWS), padded lists and an owned mask with a reduce hook."""
    import asteroid_hpc.model.spatial as spatial

    monkeypatch.setattr(spatial, "BLOCK_ROWS", 30)  # 3 frames -> blocks of 10 atoms
    torch.manual_seed(2)
    block = SpatialBlock(16, 2, 6, 3.0, 2, 0.0).eval()
    h, positions = block_inputs(n_atoms=35, seed=3)
    graph = radius_graph(positions, 2.0, 20)
    assert not graph.mask.all()  # padding present
    owned = torch.arange(35) < 20
    recorded = {}
    block(h, positions, graph, owned_mask=~owned, reduce=lambda *s: recorded.setdefault("rest", s))
    reduce = lambda *s: merge_softmax_partials([s, recorded["rest"]])  # noqa: E731
    (fast, _), (ref, _) = both(lambda: block(h, positions, graph, owned_mask=owned, reduce=reduce))
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)


def test_gradients_equal_those_of_the_einsum_formulation():
    torch.manual_seed(3)
    block = SpatialBlock(16, 2, 6, 3.0, 2, 0.0).train()
    h, positions = block_inputs(n_atoms=25)
    graph = radius_graph(positions, 3.0, 10)

    def grads():
        block.zero_grad()
        out, vectors = block(h, positions, graph, return_vectors=True)
        (out.pow(2).sum() + vectors.pow(2).sum()).backward()
        return [p.grad.clone() for p in block.parameters()]

    fast, ref = both(grads)
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["local_global", "full"])
def test_model_forecast_equals_einsum_formulation(attention):
    cfg = ModelConfig(history_frames=4, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=2,
                      decoder_layers=1, attention=attention, cutoff_angstrom=3.0, max_neighbors=8,
                      num_global_tokens=2, num_rbf=6, symmetry="equivariant")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    history = (torch.randn(3, 1, 30, 3, generator=gen) * 2.5
               + torch.randn(3, 4, 30, 3, generator=gen).mul(0.05).cumsum(1))
    elements = torch.full((30,), 6)
    fast, ref = both(lambda: model.forecast(history, elements, 6))
    assert (fast - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["old_plain_model", "old_reference_model"])
def test_saved_models_reproduce_their_stored_forecasts(name):
    model = load_weights(FIXTURES / f"{name}.safetensors")
    inputs = np.load(FIXTURES / "old_reference_model_forecast.npz")  # the one fixed input of both
    expected = torch.from_numpy(np.load(FIXTURES / f"{name}_forecast.npz")["forecast"])
    forecast = model.forecast(torch.from_numpy(inputs["history"]), torch.from_numpy(inputs["atomic_numbers"]),
                              expected.shape[1])
    assert (forecast - expected).abs().max() <= 1e-5


def test_flop_count_counts_the_einsum_formulation_and_the_temporal_attention():
    """The count is the reference formulation's (the fast path's own products are a subset of it) plus the
    temporal attention's q·kᵀ and α·v, which torch's counter misses on CPU."""
    cfg = ModelConfig(history_frames=4, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=1,
                      decoder_layers=1, attention="local_global", cutoff_angstrom=5.0, max_neighbors=16,
                      num_global_tokens=4, num_rbf=8, symmetry="equivariant")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    history = torch.rand(1, 4, 200, 3) * 20.0
    elements = torch.full((200,), 18)
    counts = []
    for context in (torch.enable_grad, counted_formulation):
        with context(), FlopCounterMode(display=False) as counter:
            model(history, elements, 2)
        counts.append(counter.get_total_flops())
    fast, reference = counts
    assert 0 < fast < reference
    # temporal: encoder self-attention over 4 frames; decoder step k alone, the earlier steps cached (its one
    # query over the k steps so far, then over the 4 memory frames), k = 1, 2
    per_pair = 2 * 2 * 200 * 2 * 8  # (q·kᵀ + α·v) · atoms · heads · head channels, per (query, key) frame pair
    temporal = per_pair * (4 * 4 + (1 * 1 + 1 * 2) + (1 * 4 + 1 * 4))
    assert count_flops(lambda: model(history, elements, 2)) == reference + temporal
    summary = model_summary(model, n_atoms=200)
    assert summary["flops_per_forecast_frame"] * 2 == reference + temporal  # one pass of 2 frames, same shapes


def test_compile_blocks_wraps_every_block_and_falls_back_to_eager():
    from asteroid_hpc.model.compiled import compile_blocks

    cfg = ModelConfig(history_frames=4, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=2,
                      decoder_layers=1, attention="local_global", cutoff_angstrom=3.0, max_neighbors=8,
                      num_global_tokens=2, num_rbf=6, symmetry="equivariant")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    history = torch.rand(1, 4, 20, 3) * 6.0
    elements = torch.full((20,), 6)
    expected = model.forecast(history, elements, 4)
    calls = []

    def broken_compiler(forward):
        def compiled(*args, **kwargs):
            calls.append(forward)
            raise RuntimeError("no C++ compiler")
        return compiled

    assert compile_blocks(model, broken_compiler) == 2 + 2 + 1 + 1  # spatial and temporal, encoder and decoder
    assert torch.equal(model.forecast(history, elements, 4), expected)  # every block fell back to eager
    assert len(calls) == 6  # each tried once (the decoder's temporal block: its step), then eager for good
    assert torch.equal(model.forecast(history, elements, 4), expected) and len(calls) == 6
