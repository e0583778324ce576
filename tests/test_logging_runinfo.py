import logging

import yaml

from asteroid_hpc.config import config_hash, load_config
from asteroid_hpc.config.resolved import write_resolved_config
from asteroid_hpc.logs import get_logger, setup_logging
from asteroid_hpc.runtime.launch import LaunchInfo
from asteroid_hpc.provenance import startup_summary


def info(rank, world=2):
    return LaunchInfo("openmpi", rank, world, rank, world, "127.0.0.1", 29500, "42", "hostA")


def test_rank_zero_logs_to_console_with_rank_prefix(capsys):
    setup_logging(info(0))
    get_logger("test").info("hello")
    err = capsys.readouterr().err
    assert "[rank 0/2 hostA] INFO hello" in err


def test_other_ranks_are_quiet_unless_asked(capsys, tmp_path):
    setup_logging(info(1), log_dir=tmp_path)
    get_logger("asteroid_hpc.test").info("from rank one")
    for handler in logging.getLogger("asteroid_hpc").handlers:
        handler.flush()
    assert capsys.readouterr().err == ""
    assert "[rank 1/2 hostA] INFO from rank one" in (tmp_path / "rank1.log").read_text()
    setup_logging(info(1), all_ranks=True)
    get_logger("x").warning("now visible")
    assert "[rank 1/2 hostA] WARNING now visible" in capsys.readouterr().err


def test_resolved_config_records_provenance(tmp_path):
    cfg = load_config(None, ["train.lr=0.002"])
    path = write_resolved_config(cfg, tmp_path / "run", info(0))
    doc = yaml.safe_load(path.read_text())
    assert doc["train"]["lr"] == 0.002
    assert doc["config_hash"] == config_hash(cfg)
    assert doc["provenance"]["job_id"] == "42"
    assert doc["provenance"]["versions"]["torch"] != "not installed"
    assert len(doc["provenance"]["git_commit"]) >= 7
    assert not list((tmp_path / "run").glob("*.tmp-*"))


def test_startup_summary_mentions_essentials():
    text = startup_summary(info(0), device="cpu", config_hash="abc123", run_dir="runs/x",
                           extra={"parameters": "1.2 M"})
    for piece in ("launcher=openmpi", "world_size=2", "device=cpu", "abc123", "runs/x", "torch", "parameters: 1.2 M"):
        assert piece in text
