"""ASTEROID: STI head, local-global spatial attention, temporal encoder-decoder (docs/method.md §2)."""

from .asteroid import Asteroid, AsteroidOutput, ThermalOutput, build_model
from .domain import Domain, WholeSystem
from .graph import NeighborGraph, radius_graph
from .spatial import GlobalReduce, local_reduce, merge_softmax_partials
from .sti import antidiagonal_means, consistency_loss, primary_loss, readoff, sti_losses
from .summary import model_summary
from .symmetry import random_rotations, rotation_equivariance_error
from .weights import load_weights, save_weights

__all__ = [
    "Asteroid", "AsteroidOutput", "Domain", "GlobalReduce", "NeighborGraph", "ThermalOutput", "WholeSystem",
    "antidiagonal_means", "build_model", "consistency_loss", "load_weights", "local_reduce", "merge_softmax_partials",
    "model_summary", "primary_loss", "radius_graph", "random_rotations", "readoff", "rotation_equivariance_error",
    "save_weights", "sti_losses",
]
