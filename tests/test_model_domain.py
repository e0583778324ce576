"""The model's domain seam: the whole-system default, what a domain is asked and when, and the ensemble's
decomposition through it (two domains, threads standing in for ranks) equal to one domain bit for bit."""

import threading
from functools import reduce
from operator import add

import numpy as np
import pytest
import torch

from asteroid_hpc.config.schema import ModelConfig
from asteroid_hpc.ensemble.domains import DomainContext, SingleDomain, decompose
from asteroid_hpc.ensemble.rollout import MemberForecaster
from asteroid_hpc.errors import UserError
from asteroid_hpc.model import Domain, WholeSystem, build_model
from asteroid_hpc.runtime.mpi import SingleProcess

M, L, N, D = 4, 4, 7, 16


def make_model(**overrides):
    base = dict(history_frames=M, delay_length=L, hidden_size=D, num_heads=2, encoder_layers=2, decoder_layers=2,
                num_global_tokens=2, num_rbf=6, cutoff_angstrom=2.5, max_neighbors=5, symmetry="equivariant")
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**base, **overrides})).eval()


def molecule_window(batch: int = 2, frames: int = M, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 1, N, 3, generator=gen) * 1.5 + 3.0
    return base + (torch.randn(batch, frames, N, 3, generator=gen) * 0.05).cumsum(dim=1), torch.tensor([6, 6, 8, 1, 1, 1, 1])


class Recording(WholeSystem):
    """The whole system, writing down every question the model asks it."""

    def __init__(self, owned_mask=None):
        self.owned_mask = owned_mask
        self.centroids, self.reductions, self.blocks = [], 0, []

    def centroid(self, window):
        self.centroids.append(tuple(window.shape))
        return super().centroid(window)

    def global_reduce(self, *stats):
        self.reductions += 1
        return super().global_reduce(*stats)

    def after_spatial_block(self, features, vectors):
        self.blocks.append((tuple(features.shape), None if vectors is None else tuple(vectors.shape)))
        return super().after_spatial_block(features, vectors)


def outputs_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("symmetry", ["equivariant", "augment"])
@pytest.mark.parametrize("attention", ["local_global", "full"])
def test_whole_system_is_the_default(symmetry, attention):
    assert isinstance(WholeSystem(), Domain) and isinstance(SingleDomain(), Domain)
    model = make_model(symmetry=symmetry, attention=attention)
    history, z = molecule_window()
    target, _ = molecule_window(frames=2 * L, seed=1)
    assert outputs_equal(model(history, z, 7), model(history, z, 7, domain=WholeSystem()))
    assert outputs_equal(model(history, z, 5, target), model(history, z, 5, target, domain=WholeSystem()))


def test_forward_asks_the_domain_once_per_pass_and_after_every_spatial_block():
    model = make_model()
    history, z = molecule_window()
    domain = Recording()
    out = model(history, z, 2 * (L - 1), domain=domain)  # two passes
    assert outputs_equal(out, model(history, z, 2 * (L - 1)))
    assert domain.centroids == [(2, M, N, 3)] * 2
    heads = model.cfg.num_heads
    encoder = [((2 * M, N, D), None), ((2 * M, N, D), (2 * M, N, heads, 3))]  # vectors from the last layer
    # autoregressive decoder: step k runs both decoder layers on step k alone (earlier steps cached)
    decoder = [((2, N, D), None), ((2, N, D), (2, N, heads, 3))] * (L - 1)
    assert domain.blocks == (encoder + decoder) * 2
    assert domain.reductions == len(domain.blocks)  # one global-token gather per spatial block


def test_the_model_continues_with_what_the_domain_returns():
    class Perturbing(WholeSystem):
        def after_spatial_block(self, features, vectors):
            features = features.clone()
            features[:, 0] = features[:, 1]  # rows overwritten, as by a halo exchange
            return features, vectors

    model = make_model()
    history, z = molecule_window()
    assert not torch.allclose(model(history, z, 3, domain=Perturbing()).forecast, model(history, z, 3).forecast)


def test_the_owned_mask_decides_which_atoms_feed_the_global_tokens():
    model = make_model()
    history, z = molecule_window()
    whole = model(history, z, 3)
    assert outputs_equal(model(history, z, 3, domain=Recording(torch.ones(N, dtype=torch.bool))), whole)
    part = torch.ones(N, dtype=torch.bool)
    part[:3] = False
    assert not torch.allclose(model(history, z, 3, domain=Recording(part)).forecast, whole.forecast)


def test_a_part_of_a_system_cannot_use_whole_molecule_vectors():
    model = make_model(rotation_basis=True)
    history, z = molecule_window()
    with pytest.raises(UserError, match="cannot be split into spatial domains"):
        model(history, z, L, domain=Recording(torch.ones(N, dtype=torch.bool)))


# ------------------------------------------------------------- the ensemble's decomposition through the seam

class ThreadGroup:
    """One rank of a group whose ranks are threads of this process: the collectives the domains use."""

    def __init__(self, rank: int, slots: list, barrier: threading.Barrier):
        self.rank, self.size, self.slots, self.barrier = rank, len(slots), slots, barrier
        self.comm = self  # DomainContext calls group.comm.alltoall

    def _everyones(self, obj) -> list:
        self.slots[self.rank] = obj
        self.barrier.wait()
        everyone = list(self.slots)
        self.barrier.wait()
        return everyone

    def allgather(self, obj) -> list:
        return self._everyones(obj)

    def alltoall(self, objs: list) -> list:
        return [row[self.rank] for row in self._everyones(objs)]

    def allreduce(self, value):
        return reduce(add, self._everyones(value))


def box_window(n_atoms: int = 150, seed: int = 0) -> np.ndarray:
    """An open argon-like box (≈3.6 Å spacing) with a few frames of thermal motion, [M, n_atoms, 3]."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms] * 3.6
    base = grid + rng.normal(scale=0.2, size=grid.shape)
    return (base + np.cumsum(rng.normal(scale=0.03, size=(M, n_atoms, 3)), axis=0)).astype(np.float32)


def two_domain_rollout(model, window, z, n_frames):
    slots, barrier = [None, None], threading.Barrier(2, timeout=60)
    results, errors = [None, None], []

    def rank(r):
        try:
            forecaster = MemberForecaster(model, z, ThreadGroup(r, slots, barrier))
            results[r] = np.concatenate(list(forecaster.rollout(window, n_frames)))
        except Exception as exc:  # re-raised by the test, after both threads ended
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert np.array_equal(results[0], results[1])  # every rank ends with the whole member
    return results[0]


@pytest.mark.parametrize("short_kernels_from", [None, 1])  # default threshold (torch's kernels here); always
def test_two_domains_equal_one_bit_for_bit_and_need_the_halo_exchange(monkeypatch, short_kernels_from):
    import asteroid_hpc.ensemble.rollout as rollout
    import asteroid_hpc.model.temporal as temporal

    if short_kernels_from is not None:
        monkeypatch.setattr(temporal, "SHORT_KERNELS_MIN", short_kernels_from)

    model = make_model(hidden_size=16, encoder_layers=1, decoder_layers=1, delay_length=3, cutoff_angstrom=5.0,
                       max_neighbors=16, num_rbf=8)
    window, z = box_window(), np.full(150, 18)
    parts = decompose(window[-1], 2, model.cfg.cutoff_angstrom)
    assert all(len(parts.local[d]) > parts.n_owned[d] for d in range(2))  # real halos
    assert isinstance(DomainContext(SingleProcess(), parts, len(z)), Domain)
    single = np.concatenate(list(MemberForecaster(model, z, SingleProcess()).rollout(window, 6)))
    assert np.array_equal(two_domain_rollout(model, window, z, 6), single)

    class NoExchange(DomainContext):
        def after_spatial_block(self, features, vectors):
            return features, vectors

    monkeypatch.setattr(rollout, "DomainContext", NoExchange)
    stale = two_domain_rollout(model, window, z, 6)
    assert np.abs(stale - single).max() > 1e-5  # stale halo features reach the owned atoms (rounding: ~1e-6)
