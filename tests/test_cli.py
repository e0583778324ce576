import json
import subprocess
import sys

import pytest

from tests.support.cli import assert_user_error, run_cli

HEAVY = ("torch", "deepspeed", "mpi4py.MPI", "netCDF4")
COMMANDS = ["preprocess", "train", "evaluate", "ensemble-forecast", "export", "config", "env"]


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom asteroid_hpc.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_ends_with_examples(command):
    code = ("import sys\nfrom asteroid_hpc.cli.main import main\n"
            f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout
    help_text = proc.stdout.split("HEAVY")[0].rstrip()
    assert "Examples:" in help_text
    assert help_text.splitlines()[-1].strip().startswith(("asteroid-hpc", "mpiexec", "srun", "sbatch")), help_text


def test_version_and_module_entry():
    proc = run_cli("--version")
    assert proc.returncode == 0 and "asteroid-hpc" in proc.stdout


def test_bad_option_is_one_line_exit_2():
    assert_user_error(run_cli("--no-such-option"), "No such option")
    assert_user_error(run_cli("config", "show", "--nope"), "config show", "No such option")


def test_bad_config_is_one_line_and_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  zero_stage: 7\n")
    assert_user_error(run_cli("config", "validate", cfg), "c.yaml", "train.zero_stage")
    debug = run_cli("--debug", "config", "validate", cfg)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_config_show_validate_schema(tmp_path):
    shown = run_cli("config", "show", "train.lr=0.5")
    assert shown.returncode == 0 and "lr: 0.5" in shown.stdout
    ok = run_cli("config", "validate")
    assert ok.returncode == 0 and ok.stdout.startswith("ok ")
    schema = json.loads(run_cli("config", "schema").stdout)
    assert schema["properties"]["model"]["properties"]["cutoff_angstrom"]["default"] == 5.0


def test_env_reports_single_process():
    proc = run_cli("env", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["launcher"] == "single" and report["world_size"] == 1 and report["device"] == "cpu"
    assert report["versions"]["torch"] != "not installed"


@pytest.mark.parametrize("command", ["evaluate", "ensemble-forecast"])
def test_model_means_the_same_in_every_command(command):
    from asteroid_hpc.cli.common import MODEL_HELP

    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert " ".join(MODEL_HELP.split()) in " ".join(proc.stdout.split())
    assert "run folder" in MODEL_HELP and "checkpoint" in MODEL_HELP and ".safetensors" in MODEL_HELP
