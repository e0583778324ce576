#!/usr/bin/env python
"""Give a trained model a sampled local geometry (``model.local_geometry=sampled``) without training it again.

The local geometry (asteroid_hpc/model/local_geometry.py) is fitted on the training frames of DATASET, the one
the model was trained on (the same fit `asteroid-hpc train` makes with the setting on); the weights are not
touched, so forecasts of means (protocols A, B, C) stay exactly as they were. The dataset's frame spacing must
be the model's.

    python tools/add_local_geometry.py models/aspirin-c.safetensors data/aspirin-c models/aspirin-c-lg.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def add_local_geometry(model_path: str, dataset: str, output: str) -> None:
    from asteroid_hpc.data.manifest import read_manifest
    from asteroid_hpc.errors import user_error
    from asteroid_hpc.model.asteroid import Asteroid
    from asteroid_hpc.model.weights import load_weights, save_weights
    from asteroid_hpc.train.trainer import dataset_local_geometry

    model = load_weights(model_path)
    spacing = float(read_manifest(dataset)["timestep_fs"])
    trained = (model.data_signature or {}).get("timestep_fs")
    if trained is not None and abs(float(trained) - spacing) > 1e-6:
        raise user_error(dataset, f"frames {spacing:g} fs apart; the model forecasts {float(trained):g} fs steps")
    cfg = dataclasses.replace(model.cfg, local_geometry="sampled")
    geometry = dataset_local_geometry(dataset)
    reference = model.reference if model.uses_reference else None
    sampled = Asteroid(cfg, reference, geometry)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("local_geometry.")}
    sampled.load_state_dict({**state, **{f"local_geometry.{k}": v for k, v in geometry.items()}})
    sampled.data_signature, sampled.training_data = model.data_signature, getattr(model, "training_data", None)
    save_weights(sampled, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a weights file written by asteroid-hpc export")
    parser.add_argument("dataset", help="the preprocessed dataset the model was trained on")
    parser.add_argument("output", help="the weights file to write (the model with its local geometry)")
    args = parser.parse_args(argv)
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.logs import setup_logging
    from asteroid_hpc.runtime.launch import detect_launch

    setup_logging(detect_launch())
    try:
        add_local_geometry(args.model, args.dataset, args.output)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
