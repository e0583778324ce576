import json
import re
from pathlib import Path

import pytest
import yaml

from asteroid_hpc.config import apply_overrides, config_hash, from_dict, json_schema, load_config, to_dict
from asteroid_hpc.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_hash_is_stable():
    a, b = load_config(None), load_config(None)
    assert config_hash(a) == config_hash(b)
    assert config_hash(load_config(None, ["train.lr=0.01"])) != config_hash(a)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "model.hidden_size=32", "data.center=false",
                             "data.split_fractions=[0.6,0.2,0.2]", "train.deepspeed={wall_clock_breakdown: true}"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.hidden_size == 32
    assert cfg.data.center is False
    assert cfg.data.split_fractions == [0.6, 0.2, 0.2]
    assert cfg.train.deepspeed == {"wall_clock_breakdown": True}


@pytest.mark.parametrize("override, message", [
    ("trian.lr=1", "unknown key 'trian' (did you mean 'train'?)"),
    ("train.lrr=1", "unknown key 'lrr' (did you mean 'lr'?)"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("train.zero_stage=4", "train.zero_stage must be 0, 1, 2 or 3"),
    ("train.max_steps=abc", "expected an integer"),
    ("model.hidden_size=30", "divisible by model.num_heads"),
    ("data.split=shuffle", "data.split must be one of"),
    ("data.split_fractions=[0.5,0.5,0.5]", "must sum to 1"),
    ("data.center=maybe", "expected true or false"),
    ("train.keep_last=1", "train.keep_last must be >= 2"),
    ("train.warmup_steps=5000", "must be < train.max_steps"),
    ("lr=1", "must be dotted"),
    ("train.lr", "expected KEY=VALUE"),
])
def test_bad_overrides_are_one_line_user_errors(override, message):
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad\.yaml: invalid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(listy)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  hiden_size: 3\n")
    with pytest.raises(UserError, match=r"unknown\.yaml: model: unknown key 'hiden_size' \(did you mean 'hidden_size'\?\)"):
        load_config(unknown)


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(evil)


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.cutoff_angstrom=6.5"])
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_schema_covers_every_field():
    schema = json_schema()
    props = schema["properties"]
    assert set(props) == {"data", "model", "train", "ensemble", "evaluate"}
    defaults = to_dict(load_config(None))
    for section, values in defaults.items():
        assert set(props[section]["properties"]) == set(values), section
    assert props["train"]["properties"]["loss_weights"]["properties"]["primary"]["type"] == "number"
    assert props["model"]["properties"]["hidden_size"]["type"] == "integer"
    assert props["evaluate"]["properties"]["max_samples"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["evaluate"]["properties"]["baseline_history_frames"]["default"] == 10


def test_evaluate_section_is_typed_and_validated(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("evaluate:\n  protocols: [A, C]\n  max_samples: 50\n  timestep_fs: 2\n")
    cfg = load_config(path, ["evaluate.split=val", "evaluate.max_samples=null"])
    assert cfg.evaluate.protocols == ["A", "C"] and cfg.evaluate.split == "val"
    assert cfg.evaluate.max_samples is None and cfg.evaluate.timestep_fs == 2.0
    assert load_config(None).evaluate.baseline_history_frames == 10
    for override, message in [("evaluate.protocols=[D]", "evaluate.protocols must be one of A, B, C, L, window"),
                              ("evaluate.split=dev", "evaluate.split"), ("evaluate.max_samples=0", "evaluate.max_samples"),
                              ("evaluate.a_input=light", "evaluate.a_input"), ("evaluate.batch_size=0", "evaluate.batch_size"),
                              ("evaluate.baseline_history_frames=1", "evaluate.baseline_history_frames"),
                              ("evaluate.history_frames=4", "unknown key 'history_frames'")]:
        with pytest.raises(UserError, match=re.escape(message)):
            load_config(None, [override])


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml")))
def test_shipped_configs_validate(path):
    load_config(REPO / path)


def test_apply_overrides_does_not_mutate():
    base = {"train": {"lr": 1.0}}
    out = apply_overrides(base, ["train.lr=2"])
    assert base == {"train": {"lr": 1.0}} and out == {"train": {"lr": 2}}
    assert yaml.safe_load(yaml.safe_dump(out)) == out
