"""A stochastic model scored on its members on the error protocols (``evaluate.members`` = K ≥ 2).

The model's row of a protocol table is then the mean of K sampled rollouts of every sample, labelled
"ASTEROID (mean of K members)"; beside it "ASTEROID (path of means)", the deterministic path of its means that
``evaluate.members: 0`` scores; and the members' CRPS and spread per lead time, on the scored atoms.
"""

from __future__ import annotations

import numpy as np

from ..metrics import coordinate_crps

MODEL_LABEL = "ASTEROID"
PATH_OF_MEANS_LABEL = f"{MODEL_LABEL} (path of means)"
CRPS_ESTIMATOR = ("ensemble CRPS per coordinate, E|X − y| − ½ E|X − X'| over the members' empirical "
                  "distribution (all K² pairs, metrics.ensemble.coordinate_crps), mean over samples, scored atoms "
                  "and x, y, z")
SPREAD_DEFINITION = ("the members' root-mean-square distance from their mean per atom "
                     "(metrics.ensemble.ensemble_spread_per_atom), root-mean-square over samples and scored atoms")


def member_mean_label(count: int) -> str:
    """The model's row when it is scored on the mean of ``count`` members."""
    return f"{MODEL_LABEL} (mean of {count} members)"


def is_model_label(method: str) -> bool:
    """Whether a table row is the model's (its forecast, its members' mean or its path of means)."""
    return method == MODEL_LABEL or method.startswith(f"{MODEL_LABEL} (")


def model_rows(path_of_means: np.ndarray | None, members: np.ndarray | None) -> dict[str, np.ndarray]:
    """The model's predictions [S, H, N, 3] by row label: its forecast alone, or with ``members``
    [S, K, H, N, 3] their mean (float64) first and the path of means beside it."""
    if path_of_means is None:
        return {}
    if members is None:
        return {MODEL_LABEL: path_of_means}
    return {member_mean_label(members.shape[1]): members.mean(axis=1, dtype=np.float64),
            PATH_OF_MEANS_LABEL: path_of_means}


def member_scores(members: np.ndarray, target: np.ndarray, atoms) -> dict:
    """The members' CRPS and spread per lead time (Å) and their means over lead times, on the scored
    ``atoms``: ``members`` [S, K, H, N, 3], ``target`` [S, H, len(atoms), 3]."""
    chosen = np.asarray(members)[:, :, :, atoms].astype(np.float64)
    crps = coordinate_crps(np.moveaxis(chosen, 1, 0), target).mean(axis=(0, 2, 3))
    deviation = chosen - chosen.mean(axis=1, keepdims=True)
    spread = np.sqrt((deviation ** 2).sum(axis=-1).mean(axis=(0, 1, 3)))
    count = chosen.shape[1]
    return {"count": count, "label": member_mean_label(count),
            "crps_per_lead_angstrom": crps.tolist(), "crps_mean_angstrom": float(crps.mean()),
            "spread_per_lead_angstrom": spread.tolist(), "spread_mean_angstrom": float(spread.mean()),
            "crps_estimator": CRPS_ESTIMATOR, "spread": SPREAD_DEFINITION}
