"""What every benchmark in tools/ shares: timing (repeats, medians, a subprocess's wall and CPU time), peak
RSS, the command line that made a result, and the JSON report (``--out`` via a temporary name, else stdout).

Imported by the bench_*.py scripts beside it (``python tools/bench_x.py`` puts tools/ on sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the checkout's asteroid_hpc, also when it is not installed
    sys.path.insert(0, str(REPO))


def command_line() -> str:
    """How this benchmark was started, as recorded in its report: ``python tools/bench_x.py ARGS``."""
    return " ".join(["python", f"tools/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="JSON file for the results (written via a temp name; "
                                                    "default: print them)")


def write_report(report: dict[str, Any], out: str | os.PathLike | None) -> None:
    """The report with the command line that made it: to ``out`` (atomically), else printed as JSON."""
    report = {"command": command_line(), **report}
    if out is None:
        print(json.dumps(report, indent=1))
        return
    from asteroid_hpc.atomic import write_json_atomic

    write_json_atomic(out, report, indent=2, sort_keys=False)
    print(f"wrote {out}", file=sys.stderr)


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return [time_call(fn)[0] for _ in range(repeats)]


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times),
            "steps": len(times)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``cmd`` (output discarded, exit on failure with its stderr); (wall seconds, CPU seconds of the
    child: user + system, all threads)."""
    start, cpu = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{proc.stderr}")
    return time.perf_counter() - start, _children_cpu_s() - cpu


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size in MiB of this process, or the largest of its finished children (Linux)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024
