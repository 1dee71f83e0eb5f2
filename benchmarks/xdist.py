"""Benchmark: YAML build cases under xdist (``-n 2``) against one process (``-n 0``).

Runs ``pytest <cases> -n 0`` and then ``pytest <cases> -n N`` in one invocation, each as a
fresh process over a fresh store, and prints both wall-clock times and the speedup. The
default cases (benchmarks/cases/cpu.yaml) are build-bound: each spends about two seconds of
CPU in its build, so the speedup measures how well builds run side by side. Both runs load
the same plugins (minus hypothesis, which the cases do not use).

    .venv/bin/python benchmarks/xdist.py                # -n 0 vs -n 2
    .venv/bin/python benchmarks/xdist.py --workers 4 --repeat 3 --min-ratio 1.8

Exits 1 if a pytest run fails, or if the best ratio is below ``--min-ratio``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = "benchmarks/cases"
GLOB = "benchmarks/cases/*.yaml"
# Plugins the cases do not use; hypothesis alone adds ~0.5s of imports to every process.
UNUSED_PLUGINS = ("-p", "no:hypothesispytest")


def run(workers: int, cases: str, glob: str, extra: list[str]) -> float:
    """Wall-clock seconds of one pytest run (its own store and basetemp); exit on failure."""
    with tempfile.TemporaryDirectory(prefix="ocibuild-bench-") as tmp:
        cmd = [sys.executable, "-m", "pytest", cases, "-q", "-p", "no:cacheprovider",
               *UNUSED_PLUGINS,
               "-o", f"ocibuild_cases={glob}", f"--basetemp={tmp}/basetemp",
               f"--ocibuild-store={tmp}/store", "-n", str(workers), *extra]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout + proc.stderr)
        raise SystemExit(f"pytest -n {workers} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Time both runs and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="xdist workers (default 2)")
    parser.add_argument("--cases", default=CASES, help=f"cases directory (default {CASES})")
    parser.add_argument("--glob", default=GLOB, help=f"ocibuild_cases glob (default {GLOB})")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs; best ratio wins")
    parser.add_argument("--min-ratio", type=float, default=0.0,
                        help="fail unless serial/parallel time reaches this (e.g. 1.8)")
    args, extra = parser.parse_known_args(argv)
    best = 0.0
    for i in range(args.repeat):
        serial = run(0, args.cases, args.glob, extra)
        parallel = run(args.workers, args.cases, args.glob, extra)
        ratio = serial / parallel
        best = max(best, ratio)
        print(f"run {i + 1}: -n 0: {serial:.2f}s   -n {args.workers}: {parallel:.2f}s   "
              f"speedup: {ratio:.2f}x", flush=True)
    print(f"best speedup with {args.workers} workers: {best:.2f}x")
    if best < args.min_ratio:
        print(f"below the required {args.min_ratio:.2f}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
