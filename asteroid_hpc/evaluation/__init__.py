"""Evaluation: the peers' protocols (docs/method.md §3), trivial baselines, reports and the cost comparison."""

from .baselines import (BASELINES, aligned_history_mean_forecast, constant_rotation_forecast,
                        constant_velocity_forecast, history_mean_forecast, one_frame_velocity_forecast,
                        persistence_forecast)
from .evaluate import evaluate_to_directory
from .protocols import ProtocolSamples, Trajectory, protocol_a, protocol_b, protocol_c
from .run import ProtocolResult, evaluate_samples, score_samples

__all__ = [
    "BASELINES", "ProtocolResult", "ProtocolSamples", "Trajectory", "aligned_history_mean_forecast",
    "constant_rotation_forecast", "constant_velocity_forecast",
    "evaluate_samples", "evaluate_to_directory", "history_mean_forecast", "one_frame_velocity_forecast",
    "persistence_forecast", "protocol_a",
    "protocol_b", "protocol_c", "score_samples",
]
