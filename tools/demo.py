"""Run the demo pipeline on the embedded aspirin data and summarise where everything is.

Called by tools/demo.sh after set-up. Each step is the real CLI; a step whose command is not built yet
(exit 3) is reported as such and the steps that need its output are skipped, never faked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "asteroid_hpc" / "resources" / "aspirin_xtb.nc"
CONFIG = REPO / "configs" / "demo.yaml"
NOT_BUILT = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("DEMO_OUT", "demo-output"), help="output directory")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks for preprocess and ensemble")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mpiexec = [shutil.which("mpiexec") or "mpiexec", "-n", str(args.ranks)]
    cli = [sys.executable, "-m", "asteroid_hpc"]
    dataset, run_dir, model, evaluation, physics, ensemble = (out / "dataset", out / "run", out / "model",
                                                              out / "evaluation", out / "physics", out / "ensemble")
    steps = [
        ("preprocess on 2 MPI ranks", [*mpiexec, *cli, "preprocess", DATA, "-o", dataset, "--config", CONFIG,
                                       "--overwrite"], dataset),
        ("train a small ASTEROID", [*cli, "train", CONFIG, f"data.dataset={dataset}", f"train.run_dir={run_dir}",
                                    "--resume", "never"], run_dir),
        ("export the best validated weights", [*cli, "export", run_dir, model, "--best"], model),
        ("evaluate against the baselines", [*cli, "evaluate", model, dataset, "-o", evaluation], evaluation),
        ("long-rollout physics (protocol L: 8 rollouts of 10 ps against the MD)",
         [*cli, "evaluate", model, DATA, "-o", physics, "--protocol", "L"], physics),
        ("4-member ensemble forecast on 2 MPI ranks",
         [*mpiexec, *cli, "ensemble-forecast", model, DATA, "-o", ensemble, "--config", CONFIG,
          "ensemble.members=4"], ensemble),
    ]
    results = []
    blocked = None
    if not DATA.exists():
        print(f"demo: the embedded data {DATA} is not built yet; nothing to run.", file=sys.stderr)
        return NOT_BUILT
    for title, command, product in steps:
        if blocked:
            results.append((title, f"skipped: needs the output of '{blocked}'", None))
            continue
        print(f"\n=== {title} ===\n$ {' '.join(map(str, command))}", flush=True)
        start = time.monotonic()
        code = subprocess.call([str(c) for c in command])
        seconds = time.monotonic() - start
        if code == NOT_BUILT:
            results.append((title, "not built yet", None))
            blocked = title
        elif code != 0:
            results.append((title, f"FAILED (exit {code})", None))
            blocked = title
        else:
            results.append((title, f"done in {seconds:.0f} s", product))
    print("\n=== demo summary ===")
    for title, status, product in results:
        print(f"- {title}: {status}" + (f" -> {product}" if product else ""))
    failed = [s for _, s, _ in results if s.startswith("FAILED")]
    incomplete = [s for _, s, _ in results if s != "not built yet" and not s.startswith("done")]
    if failed:
        return 1
    return NOT_BUILT if incomplete or any(s == "not built yet" for _, s, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
