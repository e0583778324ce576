"""Typed configuration: schema, loading, overrides, JSON Schema."""

from .load import apply_overrides, config_hash, from_dict, json_schema, load_config, read_yaml, to_dict
from .schema import AsteroidConfig, DataConfig, EnsembleConfig, EvaluateConfig, LossWeights, ModelConfig, TrainConfig

__all__ = [
    "AsteroidConfig", "DataConfig", "EnsembleConfig", "EvaluateConfig", "LossWeights", "ModelConfig", "TrainConfig",
    "apply_overrides", "config_hash", "from_dict", "json_schema", "load_config", "read_yaml", "to_dict",
]
