"""How many members a rank forecasts together: from the system size, within a memory budget.

Batching pays while one member leaves the forward's matrix products small (on one CPU core the demo model
spent 2.5 ms per member-frame at batch 1 and 1.2 ms at batch 64 on aspirin; a GPU needs far more rows to
fill). The default batch fills a forward with about ``ATOMS_PER_BATCH`` atoms. A batch's activations grow
with batch × atoms × (window + pass) frames, never with the horizon (frames go to disk after each pass);
a batch estimated above ``ensemble.batch_memory_mb`` is split, with a log line.
"""

from __future__ import annotations

from ..config.schema import EnsembleConfig, ModelConfig
from ..logs import get_logger

log = get_logger(__name__)

ATOMS_PER_BATCH = 4096  # atoms per forward the default batch aims at
MAX_AUTO_BATCH = 64
# float32 activations alive at once per (atom, frame, hidden unit) of a pass: features, norms, queries, keys,
# values, feed-forward (2×), temporal attention, the decoder's steps (an upper estimate; local attention's
# neighbour intermediates are blocked to a fixed number of rows and do not grow with the batch)
ACTIVATIONS_PER_UNIT = 24
FLOAT_BYTES = 4


def member_bytes(model_cfg: ModelConfig, n_atoms: int) -> int:
    """Estimated activation bytes one member adds to a batch's pass."""
    frames = model_cfg.history_frames + model_cfg.delay_length
    per_frame = n_atoms * model_cfg.hidden_size * ACTIVATIONS_PER_UNIT
    if model_cfg.attention == "full":  # [frames, N, N, heads] logits and weights
        per_frame += 3 * n_atoms * n_atoms * model_cfg.num_heads
    return FLOAT_BYTES * frames * per_frame


def batch_members(ens: EnsembleConfig, model_cfg: ModelConfig, n_atoms: int, members_here: int) -> int:
    """Members per batch on this rank: ``ensemble.batch_members`` (0: from the system size), at most the
    rank's members, split to fit ``ensemble.batch_memory_mb`` (logged when it does)."""
    wanted = ens.batch_members or max(1, min(MAX_AUTO_BATCH, ATOMS_PER_BATCH // max(1, n_atoms)))
    wanted = max(1, min(wanted, members_here))
    per_member = member_bytes(model_cfg, n_atoms)
    fitting = max(1, int(ens.batch_memory_mb * 2 ** 20 // per_member))
    if fitting < wanted:
        log.info("ensemble: a batch of %d members (~%.0f MB of activations) exceeds ensemble.batch_memory_mb=%d; "
                 "running batches of %d", wanted, wanted * per_member / 2 ** 20, ens.batch_memory_mb, fitting)
        return fitting
    return wanted
