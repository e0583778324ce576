"""ASTEROID model properties: causality, symmetries, local vs full attention, gradients, API, weights I/O."""

import pytest
import torch

from asteroid_hpc.config.schema import LossWeights, ModelConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.model import (Asteroid, build_model, load_weights, merge_softmax_partials, model_summary,
                                radius_graph, rotation_equivariance_error, save_weights, sti_losses)
from asteroid_hpc.model.spatial import SpatialBlock
from asteroid_hpc.model.temporal import StepCache, TemporalBlock

M, L, N = 4, 4, 7



def small_config(**overrides) -> ModelConfig:
    base = dict(history_frames=M, delay_length=L, hidden_size=16, num_heads=2, encoder_layers=2, decoder_layers=2,
                num_global_tokens=2, num_rbf=6, cutoff_angstrom=2.5, max_neighbors=5, symmetry="equivariant")
    base.update(overrides)
    return ModelConfig(**base)


def make_model(**overrides) -> Asteroid:
    torch.manual_seed(0)
    return build_model(small_config(**overrides)).eval()


def molecule_window(frames: int = M, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small molecule-like cloud (≈1.5 Å spacing) moving by small random steps."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 1, N, 3, generator=gen) * 1.5 + 3.0
    steps = torch.randn(batch, frames, N, 3, generator=gen) * 0.05
    return base + steps.cumsum(dim=1), torch.tensor([6, 6, 8, 1, 1, 1, 1])


@pytest.mark.parametrize("symmetry", ["equivariant", "augment"])
def test_no_future_leakage_in_decoder(symmetry):
    model = make_model(symmetry=symmetry)
    history, z = molecule_window()
    future, _ = molecule_window(frames=L - 1, seed=1)
    base = model(history, z, L - 1, future).forecast
    for t in range(L - 1):
        changed = future.clone()
        changed[:, t:] += torch.randn_like(changed[:, t:])
        out = model(history, z, L - 1, changed).forecast
        assert torch.equal(out[:, :t + 1], base[:, :t + 1]), f"forecast before frame {t + 1} saw frame {t}"
        if t + 1 < L - 1:  # teacher forcing is wired: frame t+1 does see frame t
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_autoregressive_equals_teacher_forcing_on_own_outputs():
    model = make_model()
    history, z = molecule_window()
    generated = model(history, z, L - 1).forecast
    teacher = model(history, z, L - 1, generated).forecast
    assert torch.allclose(generated, teacher, atol=1e-5)


@pytest.mark.parametrize("attention", ["local_global", "full"])
@pytest.mark.parametrize("symmetry", ["equivariant", "augment"])
def test_permutation_and_translation_exact(attention, symmetry):
    model = make_model(attention=attention, symmetry=symmetry)
    history, z = molecule_window()
    out = model(history, z, L + 1)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    permuted = model(history[:, :, perm], z[perm], L + 1)
    for name in ("forecast", "hankel", "reconstruction", "readoff"):
        assert torch.allclose(getattr(permuted, name), getattr(out, name)[..., perm, :], atol=1e-5), name
    shift = torch.tensor([12.5, -7.0, 3.25])
    shifted = model(history + shift, z, L + 1)
    for name in ("forecast", "hankel", "reconstruction", "readoff"):
        assert torch.allclose(getattr(shifted, name) - shift, getattr(out, name), atol=2e-5), name


def test_large_systems_run_in_spatial_order_with_outputs_in_caller_order(monkeypatch):
    import asteroid_hpc.model.asteroid as asteroid_module

    model = make_model(attention="local_global")
    gen = torch.Generator().manual_seed(0)
    history = (torch.rand(1, 1, 80, 3, generator=gen) * 9 + torch.randn(1, M, 80, 3, generator=gen) * 0.05)
    z = torch.full((80,), 6)
    reference = model(history, z, L)
    monkeypatch.setattr(asteroid_module, "LOCALITY_SORT_MIN_ATOMS", 1)
    order = model._locality_order(history, None, None)
    assert order is not None and not torch.equal(order, torch.arange(80))
    sorted_run = model(history, z, L)
    for name in ("forecast", "hankel", "reconstruction", "readoff"):
        assert torch.allclose(getattr(sorted_run, name), getattr(reference, name), atol=1e-5), name


def test_rotation_equivariance_error():
    history, z = molecule_window()
    history = history - 3.0  # near the origin: float32 rounding of absolute Å is not an equivariance error
    errors = {symmetry: rotation_equivariance_error(make_model(symmetry=symmetry), history, z, L, num_rotations=2)
              for symmetry in ("equivariant", "augment")}
    float64 = rotation_equivariance_error(make_model(symmetry="equivariant").double(), history.double(), z, L,
                                          num_rotations=2)
    print(f"\nrotation equivariance error (relative to the forecast displacement): float32 {errors}, "
          f"float64 equivariant {float64:.1e}")
    assert errors["equivariant"] < 1e-5
    assert float64 < 1e-10
    assert errors["augment"] > 1e-3  # not equivariant by construction: the measurement can tell


@pytest.mark.parametrize("symmetry", ["equivariant", "augment"])
def test_local_global_with_large_cutoff_is_full_attention(symmetry):
    local = make_model(attention="local_global", cutoff_angstrom=100.0, max_neighbors=N, symmetry=symmetry)
    full = make_model(attention="full", cutoff_angstrom=100.0, symmetry=symmetry)  # same RBF range
    full.load_state_dict(local.state_dict())
    history, z = molecule_window()
    a, b = local(history, z, L + 1), full(history, z, L + 1)
    for name in ("forecast", "hankel", "reconstruction", "readoff"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name
    small = make_model(attention="local_global", cutoff_angstrom=1.0, symmetry=symmetry)
    small.load_state_dict(local.state_dict())
    assert not torch.allclose(small(history, z, L + 1).forecast, b.forecast, atol=1e-4)


@pytest.mark.parametrize("symmetry", ["equivariant", "augment"])
def test_every_parameter_receives_a_gradient(symmetry):
    model = make_model(symmetry=symmetry).train()
    history, z = molecule_window()
    target, _ = molecule_window(frames=2 * L, seed=1)
    for teacher in (target, None):
        model.zero_grad()
        loss, _ = sti_losses(model(history, z, 2 * L, teacher), history, target, LossWeights())
        loss.backward()
        dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, f"no gradient for {dead}"


def test_forecast_any_number_of_frames_is_iterative():
    model = make_model()
    history, z = molecule_window()
    long = model.forecast(history, z, 3 * L + 2)
    assert long.shape == (2, 3 * L + 2, N, 3) and torch.isfinite(long).all()
    assert model.forecast(history, z, 1).shape == (2, 1, N, 3)
    assert torch.allclose(model.forecast(history, z, L + 1), long[:, :L + 1], atol=1e-6)
    assert not torch.is_grad_enabled() or not long.requires_grad


@pytest.mark.parametrize("attention", ["full", "local_global"])
def test_forecast_only_skips_the_sti_outputs_and_keeps_the_forecast(attention):
    """Without the STI outputs a pass runs the primary head on the L−1 frames the read-off uses, and no
    conjugate; passes after the first always do. The forecast does not move."""
    model = make_model(history_frames=7, attention=attention)
    history, z = molecule_window(frames=7)
    with torch.no_grad():
        full = model(history, z, 3 * L)  # three passes
        fast = model(history, z, 3 * L, forecast_only=True)
    assert full.hankel.shape == (2, 7, L, N, 3) and full.reconstruction.shape == (2, 7, N, 3)
    assert fast.hankel is None and fast.reconstruction is None
    assert torch.allclose(fast.forecast, full.forecast, atol=1e-6, rtol=0)
    assert torch.allclose(fast.readoff, full.readoff, atol=1e-6, rtol=0)
    assert torch.equal(model.forecast(history, z, 3 * L), fast.forecast)


def test_radius_graph_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    positions = torch.rand(2, 60, 3, generator=gen) * 8.0
    cutoff = 2.5
    graph = radius_graph(positions, cutoff, max_neighbors=64)
    assert graph.index.shape == (2, 60, 60)
    distances = torch.cdist(positions.double(), positions.double())
    for b in range(2):
        for i in range(60):
            listed = set(graph.index[b, i][graph.mask[b, i]].tolist())
            assert listed == set(torch.nonzero(distances[b, i] <= cutoff).flatten().tolist())
    truncated = radius_graph(positions, cutoff, max_neighbors=3)  # keeps the nearest, self first
    assert truncated.index.shape == (2, 60, 3)
    assert torch.equal(truncated.index[:, :, 0], torch.arange(60).expand(2, 60))
    nearest = distances[0].topk(3, largest=False).indices
    for i in range(60):
        valid = truncated.index[0, i][truncated.mask[0, i]]
        assert set(valid.tolist()) <= set(nearest[i].tolist())


def test_global_gather_reduce_hook_combines_domains():
    """Two 'domains' each gather from their own atoms; the hook merges their softmax statistics."""
    torch.manual_seed(0)
    block = SpatialBlock(16, 2, 6, 3.0, 3, 0.0).eval()
    h, positions = torch.randn(1, 10, 16), torch.randn(1, 10, 3) * 2
    graph = radius_graph(positions, 3.0, 10)
    owned_a = torch.zeros(1, 10, dtype=torch.bool)
    owned_a[:, :4] = True
    recorded = {}
    block(h, positions, graph, owned_mask=~owned_a, reduce=lambda *s: recorded.setdefault("b", s))
    merged, _ = block(h, positions, graph, owned_mask=owned_a,
                      reduce=lambda *s: merge_softmax_partials([s, recorded["b"]]))
    whole, _ = block(h, positions, graph)
    domain_only, _ = block(h, positions, graph, owned_mask=owned_a)
    assert torch.allclose(merged, whole, atol=1e-6)
    assert not torch.allclose(domain_only, whole, atol=1e-4)


def test_weights_round_trip_without_pickle(tmp_path):
    model = make_model(symmetry="augment", attention="full")
    path = save_weights(model, tmp_path / "model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    loaded = load_weights(path)
    assert loaded.cfg == model.cfg
    history, z = molecule_window()
    assert torch.equal(loaded.forecast(history, z, 5), model.forecast(history, z, 5))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_model_summary_counts_parameters_and_flops():
    model = make_model()
    summary = model_summary(model, n_atoms=48)
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    bigger = model_summary(model, n_atoms=96)
    assert summary["flops_per_forecast_frame"] > 0
    ratio = bigger["flops_per_forecast_frame"] / summary["flops_per_forecast_frame"]
    assert 1.6 < ratio < 2.4, ratio  # linear in N at fixed density


def test_bad_inputs_raise_user_error():
    model = make_model()
    history, z = molecule_window()
    with pytest.raises(UserError, match="history_frames"):
        model(history[:, 1:], z, 2)
    with pytest.raises(UserError, match="horizon"):
        model(history, z, 0)
    with pytest.raises(UserError, match="num_elements"):
        model(history, z * 100, 2)
    with pytest.raises(UserError, match="atoms"):
        model(history, z[:3], 2)
    assert torch.isfinite(model.forecast(history, z, 1)).all()


# ----------------------------------------------------------------------------------------- reference structure

def reference_model(symmetry: str = "equivariant") -> tuple[Asteroid, torch.Tensor]:
    """A model whose reference structure is the molecule_window cloud's base shape."""
    history, _ = molecule_window()
    reference = history[0, 0] - history[0, 0].mean(dim=0)
    torch.manual_seed(0)
    cfg = small_config(symmetry=symmetry, reference_structure="training_mean")
    return build_model(cfg, reference.double().tolist()).eval(), reference


def test_superpose_onto_matches_the_numpy_kabsch():
    from asteroid_hpc.metrics import kabsch_superpose
    from asteroid_hpc.geometry import superpose_onto
    from asteroid_hpc.model.symmetry import random_rotations

    history, _ = molecule_window()
    reference = history[0, 0].double()
    rotated = (reference @ random_rotations(1, dtype=torch.float64)[0].T + 2.0).unsqueeze(0)
    targets = torch.cat([rotated, history[:, -1].double()])
    expected = kabsch_superpose(reference.numpy()[None].repeat(len(targets), 0), targets.numpy())
    assert torch.allclose(superpose_onto(reference, targets), torch.from_numpy(expected), atol=1e-12)
    assert torch.allclose(superpose_onto(reference, rotated), rotated, atol=1e-12)  # a rigid copy lands exactly


def test_reference_structure_model_stays_equivariant_and_takes_its_own_molecule_only(tmp_path):
    model, _ = reference_model()
    plain = make_model()
    assert model.num_basis == plain.num_basis + 1  # r − x_last joins the per-atom vectors
    history, z = molecule_window()
    history = history - 3.0
    assert rotation_equivariance_error(model, history, z, L, num_rotations=2) < 1e-5
    model.train()
    target, _ = molecule_window(frames=2 * L, seed=1)
    loss, _ = sti_losses(model(history, z, 2 * L, target - 3.0), history, target - 3.0, LossWeights())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(UserError, match="reference structure has 7 atoms, the input 6"):
        model(history[:, :, :6], z[:6], L)
    # the reference travels in the weights' state (a float32 tensor), never in the config
    loaded = load_weights(save_weights(model.eval(), tmp_path / "ref.safetensors"))
    assert "reference" in loaded.state_dict() and loaded.reference.dtype == torch.float32
    assert torch.equal(loaded.reference, model.reference) and loaded.cfg == model.cfg
    assert torch.equal(loaded.forecast(history, z, 5), model.forecast(history, z, 5))
    assert model_summary(model)["n_atoms_probed"] == N


def test_reference_structure_config_and_coordinates_are_checked():
    with pytest.raises(UserError, match="model.reference_structure"):
        small_config(reference_structure="mean")
    with pytest.raises(UserError, match="needs the reference coordinates"):
        build_model(small_config(reference_structure="training_mean"))
    with pytest.raises(UserError, match="apply only with model.reference_structure=training_mean"):
        build_model(small_config(), [[0.0, 0.0, 0.0]])
    with pytest.raises(UserError, match=r"must be \[N, 3\], got \[1, 2\]"):
        build_model(small_config(reference_structure="training_mean"), [[0.0, 0.0]])


def test_rotation_basis_is_the_windows_rotation_continued_and_keeps_every_symmetry():
    from scipy.spatial.transform import Rotation

    from asteroid_hpc.model.symmetry import rotation_step

    history, z = molecule_window(batch=1)
    body = history[0, 0].double() - history[0, 0].double().mean(dim=0)
    turn = Rotation.from_rotvec([0.0, 0.0, 0.02])  # 0.02 rad per frame about z
    frames = torch.stack([body @ torch.from_numpy(Rotation.from_rotvec([0, 0, 0.02 * k]).as_matrix().T)
                          for k in range(M)]).unsqueeze(0)
    step = rotation_step(frames)[0]
    expected = frames[0, -1] @ torch.from_numpy(turn.as_matrix().T) - frames[0, -1]
    assert (step - expected).norm() < 0.03 * expected.norm()  # small-angle: (R³ − I)/3 for one step R of 0.02 rad
    model = make_model(rotation_basis=True)
    assert model.num_basis == make_model().num_basis + 1
    history = history - 3.0
    assert rotation_equivariance_error(model, history, z, L, num_rotations=2) < 1e-5
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    permuted = model(history[:, :, order], z[order], L).forecast
    assert torch.allclose(permuted, model(history, z, L).forecast[:, :, order], atol=1e-5)


def test_a_decoder_step_over_its_cache_equals_the_causal_block_over_all_steps():
    """Free-running decoding runs step k alone on the cached keys and values of steps 0 … k−1 and of the
    memory: the same token as the causal block over steps 0 … k."""
    torch.manual_seed(0)
    block = TemporalBlock(16, 2, 0.0, causal=True, cross=True).eval()
    tokens, memory = torch.randn(5, 4, 16), torch.randn(5, 6, 16)
    cache = StepCache()
    stepped = torch.cat([block.step(tokens[:, k:k + 1], memory, cache) for k in range(4)], dim=1)
    assert (stepped - block(tokens, memory)).abs().max() <= 1e-6
    assert len(cache.keys) == 4 and cache.memory[0].shape == (5, 2, 6, 8)


@pytest.mark.parametrize("queries", [1, 4])
def test_inference_attention_of_a_sequence_does_not_depend_on_the_batch_it_is_in(queries):
    """Spatial domains run the temporal attention on batches of different sizes, and 1 and D domains agree bit
    for bit only if each sequence's result is the same whatever batch holds it (a kernel that computes the
    entries past its last full vector another way breaks that: torch's exp2 and softmax over a leading axis)."""
    from asteroid_hpc.model.temporal import Attention, frames_first

    torch.manual_seed(0)
    attention = Attention(16, 2, 0.0).eval()
    x, memory = torch.randn(150, queries, 16), torch.randn(150, 5, 16)
    keys_values = tuple(frames_first(t) for t in attention.keys_values(memory))
    for kv in (None, keys_values):  # self-attention; cached (frames-first) keys and values
        whole = attention(x, keys_values=kv, short_kernels=True)
        for rows in (slice(0, 77), slice(77, 150), slice(3, 90)):
            part_kv = None if kv is None else tuple(frames_first(t[rows]) for t in kv)
            assert torch.equal(attention(x[rows], keys_values=part_kv, short_kernels=True), whole[rows])
        reference = torch.nn.functional.scaled_dot_product_attention(
            attention._split(attention.query(x)), *(attention.keys_values(x) if kv is None else kv))
        assert (whole - attention.out(reference.transpose(1, 2).flatten(-2))).abs().max() <= 1e-6
    causal = attention(x, causal=True, short_kernels=True)  # the decoder's teacher-forced self-attention
    reference = torch.nn.functional.scaled_dot_product_attention(
        attention._split(attention.query(x)), *attention.keys_values(x), is_causal=True)
    assert (causal - attention.out(reference.transpose(1, 2).flatten(-2))).abs().max() <= 1e-6
