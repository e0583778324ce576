"""YAML → typed config, dotted ``KEY=VALUE`` overrides, JSON Schema, and the resolved-config dump."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import UserError
from .schema import AsteroidConfig


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(where: str, key: str, known) -> UserError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UserError(f"{where}: unknown key '{key}'{hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (ints widen to floats), recursing into dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def _build(cls, data: dict, where: str):
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(where, str(key), names)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except UserError as exc:
        raise UserError(f"{where}: {exc}" if where and not str(exc).startswith(where) else str(exc)) from None


def from_dict(data: dict, source: str = "config") -> AsteroidConfig:
    """Build a validated :class:`AsteroidConfig`; errors name ``source``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections")
    hints = _field_types(AsteroidConfig)
    names = list(hints)
    for key in data:
        if key not in names:
            raise _unknown_key(source, str(key), names)
    try:
        sections = {k: _coerce(v if v is not None else {}, hints[k], k) for k, v in data.items()}
        return AsteroidConfig(**sections)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; a missing or malformed file is a UserError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: cannot read config (not UTF-8 text: byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) onto a config mapping."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}': expected KEY=VALUE, e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise UserError(f"override '{item}': the key must be dotted, e.g. train.lr")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> AsteroidConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(data, source=str(path) if path is not None else "config")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg) -> str:
    """A short stable hash of the resolved config."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _schema_of(tp: Any) -> dict:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = _field_types(tp)
        props = {}
        for f in dataclasses.fields(tp):
            prop = _schema_of(hints[f.name])
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if not dataclasses.is_dataclass(default):
                prop["default"] = default
            props[f.name] = prop
        return {"type": "object", "title": tp.__name__, "description": (tp.__doc__ or "").strip(),
                "properties": props, "additionalProperties": False}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_of(a) for a in typing.get_args(tp)]}
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object"}
    return {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
            str: {"type": "string"}, type(None): {"type": "null"}}.get(tp, {})


def json_schema() -> dict:
    """JSON Schema of the whole config, generated from the dataclasses."""
    schema = _schema_of(AsteroidConfig)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
