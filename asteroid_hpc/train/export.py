"""Consolidate a (possibly ZeRO-partitioned) training checkpoint into one fp32 weights file.

The output is the model's own safetensors format (:func:`asteroid_hpc.model.save_weights`, config in its
metadata), loadable with :func:`asteroid_hpc.model.load_weights` on any number of ranks.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..logs import get_logger
from ..errors import user_error
from .checkpoint import (CLIENT_STATE, CheckpointManager, check_pickles_safe, read_json, resolve_resume,
                         safe_torch_load)

log = get_logger(__name__)


def _fp32_state_dict(path: Path) -> dict:
    """The full fp32 module state of checkpoint folder ``path``, on CPU (float64 and integer buffers as stored)."""
    import torch

    check_pickles_safe(path)  # DeepSpeed's zero_to_fp32 unpickles without restrictions
    if any(path.glob("*zero_pp_rank_*optim_states.pt")):  # ZeRO (or bf16) master weights, partitioned
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    # ZeRO stage 0: the module state is saved whole by rank 0 (in bf16/fp16 runs these are the low-precision
    # weights, upcast here; DeepSpeed keeps its fp32 master copy inside the optimizer state at stage 0)
    model_file = path / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise user_error(path, "no DeepSpeed model states (mp_rank_00_model_states.pt) in this checkpoint")
    state = safe_torch_load(model_file).get("module")
    if not isinstance(state, dict):
        raise user_error(model_file, "no 'module' state dict in the DeepSpeed model states")
    return {name: tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
            for name, tensor in state.items()}


def best_checkpoint(run: str | os.PathLike) -> Path:
    """The best-validation checkpoint (``best.json``) of a run folder or its ``checkpoints`` folder."""
    run = Path(run)
    for directory in (run / "checkpoints", run):
        manager = CheckpointManager(directory, keep_last=2)
        best = manager.best()
        if best is None:
            continue
        path = manager.path_of(int(best["step"]))
        if not manager.is_complete(path):
            raise user_error(directory / "best.json", f"names {path.name}, which is not a complete checkpoint")
        return path
    raise user_error(run, "no best.json here: the run has not validated yet (export its newest checkpoint instead)")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, best: bool = False) -> Path:
    """Write the fp32 weights of ``checkpoint`` (a step folder, a checkpoints folder or a run folder).

    With ``best``, ``checkpoint`` is a run (or checkpoints) folder and its best-validation checkpoint is used.
    """
    from ..model import save_weights

    if best:
        path = best_checkpoint(checkpoint)
    else:
        path = resolve_resume(str(checkpoint), CheckpointManager(Path(checkpoint), keep_last=2))
    if path is None:  # unreachable for a path argument, kept for type checkers
        raise user_error(checkpoint, "no complete checkpoint found")
    model, client_state = checkpoint_model(path)
    output = Path(output)
    if output.is_dir():
        raise user_error(output, "is a directory; give the output weights file name, e.g. model.safetensors")
    output.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, output)
    log.info("exported %s (step %s) to %s", path, client_state.get("step"), output)
    return output


def _restore_local_geometry(state: dict, dataset: str | None, path: Path) -> None:
    """A bf16/fp16 run keeps its fitted local geometry (float64 buffers) rounded to that precision: fitted again
    (deterministic) from the run's dataset when it exists; left as stored, with a warning, when it does not."""
    import torch

    mean = state.get("local_geometry.mean")
    if mean is None or mean.dtype == torch.float64:
        return
    if not dataset or not Path(dataset).is_dir():
        log.warning("%s: the local geometry was stored in %s and its dataset %s is gone: exported as stored",
                    path, mean.dtype, dataset)
        return
    from .trainer import dataset_local_geometry

    state.update({f"local_geometry.{k}": v for k, v in dataset_local_geometry(dataset).items()})


def checkpoint_model(path: Path):
    """(the fp32 model on CPU, the client state) of complete checkpoint folder ``path``."""
    from ..model.weights import model_config_of, model_from_state

    client_state = read_json(path / CLIENT_STATE)
    try:
        model_config = client_state["config"]["model"]
        model_config_of(model_config)
    except (KeyError, TypeError) as exc:
        raise user_error(path / CLIENT_STATE, f"no usable model config ({exc})") from None
    state = _fp32_state_dict(path)
    _restore_local_geometry(state, client_state["config"].get("data", {}).get("dataset"), path)
    model = model_from_state(model_config, state, path, client_state.get("training_data"))
    model.data_signature = client_state.get("data_signature")  # the training inputs (data/signature.py)
    return model, client_state
