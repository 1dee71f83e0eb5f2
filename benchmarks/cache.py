"""Benchmark: a warm rerun of the unchanged ``cases/`` suite against the cold run.

Both runs use one fresh store (``--ocibuild-store``): the cold run builds every case, the warm
run finds every result recorded and runs nothing. Each run is a separate pytest process, timed
wall-clock from start to exit (interpreter start-up and collection included)::

    .venv/bin/python benchmarks/cache.py                 # cases/ from the repository root
    .venv/bin/python benchmarks/cache.py -n 4            # both runs under xdist
    .venv/bin/python benchmarks/cache.py -- -k basics    # extra pytest arguments after --

Before the timed runs, one untimed run of the suite (into a store of its own) lets Python
write its bytecode caches, including pytest's assertion-rewritten modules, as any second use of
an installation would find them; without it, under ``PYTHONDONTWRITEBYTECODE`` every process
compiles every module again, which is not what either timed run is about (``--no-warmup``
skips it).

Prints both times, the ratio and whether it meets the target (20x), then the floor: the same
pytest command collecting an empty directory (interpreter, pytest and its plugins starting and
stopping), the best ratio any warm run could reach, and the ratio of pytest's own session
times (collection and tests, without start-up). Exit status: 0 if both
runs passed, else the first failing pytest exit status. The store and basetemps live in a
temporary directory removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 20.0


def run(python: str, cases: str, store: Path, basetemp: Path, extra: list[str],
        label: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
        ) -> tuple[float, int, str]:
    """Run the suite once; return (seconds, exit status, pytest's summary line)."""
    cmd = [python, "-m", "pytest", cases, "-p", "ocibuild", "--ocibuild-store", str(store),
           "--basetemp", str(basetemp), "-q", "-p", "no:cacheprovider", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else "(no output)"
    if done.returncode != 0:
        print(f"--- {label} run failed ({done.returncode}): {' '.join(cmd)}", file=sys.stderr)
        print("\n".join(done.stdout.splitlines()[-30:]), file=sys.stderr)
        print("\n".join(done.stderr.splitlines()[-30:]), file=sys.stderr)
    return elapsed, done.returncode, summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="cases/", help="what pytest collects (default: cases/)")
    p.add_argument("--python", default=sys.executable, help="interpreter with the plugin")
    p.add_argument("-n", "--workers", help="run both passes under pytest-xdist with -n N")
    p.add_argument("--keep", action="store_true", help="keep the store and basetemps")
    p.add_argument("--no-warmup", action="store_true",
                   help="no untimed run first (Python then may compile every module in both)")
    p.add_argument("--cwd", type=Path, default=ROOT,
                   help="directory pytest runs in (default: the repository root)")
    args = p.parse_args(argv)
    if args.workers:
        extra = ["-n", args.workers, *extra]
    tmp = Path(tempfile.mkdtemp(prefix="ocibuild-bench-cache-"))
    store = tmp / "store"  # fresh: nothing recorded before the cold run
    try:
        if not args.no_warmup:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            run(args.python, args.cases, tmp / "warmup-store", tmp / "warmup", extra,
                "warm-up", args.cwd, env)
        cold, cold_rc, cold_sum = run(args.python, args.cases, store, tmp / "cold", extra,
                                      "cold", args.cwd)
        warm, warm_rc, warm_sum = run(args.python, args.cases, store, tmp / "warm", extra,
                                      "warm", args.cwd)
        (tmp / "empty").mkdir()
        config = ["-c", str(args.cwd / "pyproject.toml"), "--rootdir", str(args.cwd)]
        floor, _, _ = run(args.python, str(tmp / "empty"), store, tmp / "floor",
                          [*extra, *config], "empty", args.cwd)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ratio = cold / warm if warm > 0 else float("inf")
    print(f"cold: {cold:8.2f}s   {cold_sum}")
    print(f"warm: {warm:8.2f}s   {warm_sum}")
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET:g}x: {verdict})")
    print(f"floor: {floor:8.2f}s   pytest with the same plugins and options collecting nothing;"
          f" best possible speed-up {cold / floor:.1f}x")
    in_cold, in_warm = _session_seconds(cold_sum), _session_seconds(warm_sum)
    if in_cold and in_warm:
        print(f"in-session (pytest's own 'in N s'): {in_cold:.2f}s / {in_warm:.2f}s = "
              f"{in_cold / in_warm:.1f}x")
    return cold_rc or warm_rc


def _session_seconds(summary: str) -> float | None:
    """The seconds of pytest's summary line (``50 passed in 0.24s``), if it has them."""
    match = re.search(r" in ([0-9.]+)s", summary)
    return float(match.group(1)) if match else None


if __name__ == "__main__":
    sys.exit(main())
