"""tools/cost_report.py with a config's architecture (untrained weights), several batch sizes, the atoms a
model sees; refusals in one line. (The arithmetic and the weights path: tests/test_evaluate.py.)"""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.support.cli import REPO, cli_env
from tests.support.tiny import tiny_model_file

# the tiny architecture, heavy atoms and a reference structure: the options the aspirin A config uses
TINY_A = {"data": {"atom_selection": "heavy"},
          "model": {"history_frames": 3, "delay_length": 2, "hidden_size": 16, "num_heads": 2, "encoder_layers": 1,
                    "decoder_layers": 1, "attention": "full", "num_rbf": 8, "symmetry": "equivariant",
                    "reference_structure": "training_mean"}}


def _tool(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # the tool sets them on import
        monkeypatch.setenv(name, "1")
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    spec = importlib.util.spec_from_file_location("cost_report", REPO / "tools" / "cost_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_cost_report_times_a_configs_architecture_untrained(tmp_path):
    from asteroid_hpc.config import load_config
    from asteroid_hpc.model import build_model

    config = _write(tmp_path / "a.yaml", TINY_A)
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "cost_report.py"), "--config", str(config), "ethanol",
                           "--stride", "2", "--frames", "3", "--md-steps", "4", "--repeats", "1",
                           "--batch-size", "1", "3", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    direct = build_model(load_config(config).model, np.zeros((3, 3)))  # the reference is a buffer, not a parameter
    assert record["model_parameters"] == sum(p.numel() for p in direct.parameters())
    assert record["untrained"] is True
    assert record["model_source"] == f"architecture of {config}, untrained weights: timing only"
    assert "untrained weights: timing only" in proc.stdout
    assert record["n_atoms"] == 9 and record["model_atoms"] == 3  # ethanol's C, C, O
    assert record["history_frames"] == 3 and record["md_steps_timed"] >= 4
    assert [b["batch_size"] for b in record["batches"]] == [1, 3] and record["batch_size"] == 1
    for batch in record["batches"]:
        assert batch["model_cpu_seconds_per_frame"] > 0
        assert batch["speedup"] == pytest.approx(record["xtb_cpu_seconds_per_frame"]
                                                 / batch["model_cpu_seconds_per_frame"])
    assert "batch 3 (per member-frame)" in proc.stdout


def test_a_trained_models_selection_applies(tmp_path):
    """Weights trained on ethanol's heavy atoms see those 3 of the 9 xTB atoms, at the ensemble's batch."""
    from asteroid_hpc.evaluation.cost import AUTO_BATCH, measure_cost
    from asteroid_hpc.model import load_weights, save_weights

    model = load_weights(tiny_model_file(tmp_path / "tiny.safetensors"))
    model.data_signature = {"input_atoms": 9, "atom_selection": "heavy", "atom_indices": [0, 1, 2],
                            "atomic_numbers": [6, 6, 8], "timestep_fs": 1.0, "frame_stride": 2,
                            "input_timestep_fs": 0.5, "topology": None, "periodic": False}
    path = save_weights(model, tmp_path / "heavy.safetensors")
    chosen = []
    report = measure_cost(path, "ethanol", stride_steps=1, forecast_frames=2, batch_sizes=(AUTO_BATCH,), repeats=1,
                          min_md_steps=2, thermalize_steps=2,
                          auto_batch=lambda cfg, n_atoms: chosen.append(n_atoms) or 2)
    assert chosen == [3] and report.model_atoms == 3 and report.batch_size == 2
    assert report.untrained is False and report.model_source == str(path)


def test_compiled_reports_the_first_calls_time(tmp_path, monkeypatch):
    """``compiled``: the model goes through compile_blocks (here a stand-in that records it; the real compiler
    runs in tests/test_ensemble_batch.py) and the report states the first, compiling call in member-ps."""
    import asteroid_hpc.model.compiled as compiled
    from asteroid_hpc.config import load_config
    from asteroid_hpc.evaluation.cost import ConfigArchitecture, measure_cost

    wrapped = []
    monkeypatch.setattr(compiled, "compile_blocks", lambda model: wrapped.append(model) or 0)
    source = ConfigArchitecture(load_config(_write(tmp_path / "a.yaml", TINY_A)), "a.yaml")
    report = measure_cost(source, "ethanol", stride_steps=2, forecast_frames=2, repeats=1, min_md_steps=4,
                          thermalize_steps=2, compiled=True)
    assert len(wrapped) == 1 and report.compiled and report.first_call_wall_seconds > 0
    member_ps = report.first_call_wall_seconds / (report.model_cpu_seconds_per_frame * report.frames_per_ps)
    assert f"took {report.first_call_wall_seconds:.1f} s wall (compiling), as long as the batch-1 forecast of " \
           f"{member_ps:.0f} member-ps" in report.markdown()
    assert report.as_dict()["compiled"] is True


@pytest.mark.parametrize("args, message", [
    (["--config", "BAD", "ethanol", "--stride", "2"], "hiden_size"),
    (["MODEL", "--config", "GOOD", "ethanol", "--stride", "2"], "not both"),
    (["ethanol", "--stride", "2"], "give a MODEL (trained weights) or --config FILE"),
    (["--config", "GOOD", "ethanol", "--stride", "2", "--batch-size", "1", "0"], "--batch-size takes positive"),
    (["--config", "GOOD", "water", "--trajectory", "x.dcd"], "--config times MD17 molecules only"),
])
def test_cost_report_refuses_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    bad = _write(tmp_path / "bad.yaml", {"model": {**TINY_A["model"], "hiden_size": 8}})
    good = _write(tmp_path / "good.yaml", TINY_A)
    names = {"BAD": str(bad), "GOOD": str(good), "MODEL": str(tmp_path / "m.safetensors")}
    out = tmp_path / "cost.json"
    code = _tool(monkeypatch).main([names.get(a, a) for a in args] + ["-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and err.startswith("cost_report: error: ") and message in err
    if "BAD" in args:
        assert str(bad) in err  # the error names the config file
