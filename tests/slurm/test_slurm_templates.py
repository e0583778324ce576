"""The project's Slurm templates on the local two-node cluster: slurm/preprocess.sh across both nodes gives
the dataset of a one-process run, and in slurm/preprocess.sh, slurm/train.sh and slurm/ensemble.sh a job
in which one rank fails (an uncaught exception, or the process killed) exits non-zero promptly.

The success paths of train.sh and ensemble.sh are in test_slurm_train.py and test_slurm_ensemble.py.
The failing rank is injected through the templates' documented ASTEROID_VENV parameter: a virtual
environment that activates the project's and puts first on PATH an ``asteroid-hpc`` that, on
SLURM_PROCID 3 only, replaces one function of the real code path with a fault. The templates, srun and
the CLI are the real ones. Every submission has an outer timeout (the fixture cancels the job).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.cli import REPO
from tests.support.data import dataset_fingerprint, random_walk, write_traj
from tests.support.train import tiny_dataset  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slurm

FAULT_RANK = 3
PROMPT_S = 45  # from the fault to the end of the job
FOUR_RANKS = ["--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"]


def _preprocess_args(tmp_path: Path, out: Path) -> list[str]:
    traj = tmp_path / "walk.nc"
    if not traj.exists():
        write_traj(traj, random_walk(1200))
    return [str(out), str(traj), "data.frames_per_shard=100", "--no-progress"]


def test_preprocess_template_across_two_nodes_equals_one_process(slurm_cluster, tmp_path):
    from asteroid_hpc.cli.main import main

    out = tmp_path / "ds"
    job = slurm_cluster.submit(REPO / "slurm" / "preprocess.sh", _preprocess_args(tmp_path, out),
                               sbatch_args=[*FOUR_RANKS, "--gpus-per-node=0"], cwd=REPO, timeout=240)
    assert job.returncode == 0 and job.state == "COMPLETED", job.describe()
    writers = {json.loads(p.read_text())["written_by_rank"] for p in (out / "shards").glob("shard-*.json")}
    assert writers == {0, 1, 2, 3}, writers  # the shards were dealt out over all four ranks
    reference = tmp_path / "reference"
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", *_preprocess_args(tmp_path, reference)[1:], "-o", str(reference)])
    assert exit_info.value.code == 0
    assert dataset_fingerprint(out) == dataset_fingerprint(reference)


def test_preprocess_template_bad_input_is_exit_2(slurm_cluster, tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("not netcdf\n")
    out = tmp_path / "ds"
    job = slurm_cluster.submit(REPO / "slurm" / "preprocess.sh", [str(out), str(bad)],
                               sbatch_args=[*FOUR_RANKS, "--gpus-per-node=0"], cwd=REPO, timeout=180)
    assert job.returncode == 2 and job.state == "FAILED", job.describe()
    errors = [line for line in job.stderr().splitlines() if "error:" in line and "bad.nc" in line]
    assert errors and "Traceback" not in job.stderr(), job.describe()
    assert not (out / "manifest.json").exists()


# ----------------------------------------------------------------------------------------------- failing rank
def _faulty_venv(root: Path, target: str, kind: str) -> Path:
    """A venv for ASTEROID_VENV whose ``asteroid-hpc`` breaks ``target`` ("module:function") on one rank."""
    venv = root / "faulty-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(textwrap.dedent(f"""\
        # shellcheck shell=bash
        source "{Path(sys.prefix) / 'bin' / 'activate'}"
        export PATH="{venv / 'bin'}:$PATH"
    """))
    launcher = venv / "bin" / "asteroid-hpc"
    launcher.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import importlib, os, signal, sys, time

        if os.environ.get("SLURM_PROCID") == "{FAULT_RANK}":
            module_name, name = "{target}".split(":")
            module = importlib.import_module(module_name)

            def fault(*args, **kwargs):
                print(f"FAULT {{time.time():.3f}} on rank {FAULT_RANK}: {kind}", file=sys.stderr, flush=True)
                if "{kind}" == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("injected fault")

            setattr(module, name, fault)
        from asteroid_hpc.cli.main import main

        main()
    """))
    launcher.chmod(0o755)
    return venv


def _assert_prompt_failure(job, submitted_at: float) -> None:
    assert job.returncode != 0 and job.state in ("FAILED", "CANCELLED"), job.describe()
    faults = [line for line in job.stderr().splitlines() if line.startswith("FAULT ")]
    assert len(faults) == 1, job.describe()  # the fault fired, on one rank only
    fault_at = float(faults[0].split()[1])
    ended_at = submitted_at + job.elapsed_s
    print(f"job {job.job_id}: exit {job.returncode}, {job.state}, ended {ended_at - fault_at:.1f} s after the fault")
    assert ended_at - fault_at < PROMPT_S, f"job ended {ended_at - fault_at:.1f} s after the fault\n{job.describe()}"


@pytest.fixture(scope="module")
def ensemble_inputs(tmp_path_factory):
    from tests.support.ensemble import ensemble_model_file, molecule_trajectory

    root = tmp_path_factory.mktemp("ens-inputs")
    return ensemble_model_file(root / "tiny.safetensors"), molecule_trajectory(root / "ic.nc", n_frames=8)


def _template_case(name: str, tmp_path: Path, request) -> tuple[str, list[str], list[str], str]:
    """(script, arguments, extra sbatch options, function to break) of one template."""
    if name == "preprocess":
        return "preprocess.sh", _preprocess_args(tmp_path, tmp_path / "ds"), ["--gpus-per-node=0"], \
            "asteroid_hpc.data.preprocess:write_shard"
    if name == "train":
        dataset = request.getfixturevalue("tiny_dataset")
        return "train.sh", ["configs/tiny/train.yaml", f"data.dataset={dataset}", f"train.run_dir={tmp_path / 'run'}",
                            "train.micro_batch_size=1"], ["--gpus-per-node=2"], "asteroid_hpc.model:sti_losses"
    model, initial = request.getfixturevalue("ensemble_inputs")
    return "ensemble.sh", [str(model), str(initial), str(tmp_path / "ens"), "ensemble.members=4",
                           "ensemble.horizon_frames=40", "ensemble.chunk_frames=2"], ["--gpus-per-node=0"], \
        "asteroid_hpc.ensemble.run:run_members"


@pytest.mark.parametrize("kind", ["exception", "crash"])
@pytest.mark.parametrize("template", ["preprocess", "train", "ensemble"])
def test_one_failing_rank_ends_the_job_promptly(slurm_cluster, tmp_path, request, template, kind):
    script, args, sbatch_extra, target = _template_case(template, tmp_path, request)
    if not (REPO / "slurm" / script).exists():
        pytest.fail(f"slurm/{script} does not exist")
    venv = _faulty_venv(tmp_path, target, kind)
    submitted_at = time.time()
    job = slurm_cluster.submit(REPO / "slurm" / script, args, sbatch_args=[*FOUR_RANKS, *sbatch_extra],
                               env={"ASTEROID_VENV": str(venv)}, cwd=REPO, timeout=300)
    _assert_prompt_failure(job, submitted_at)
