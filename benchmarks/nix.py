"""``ocibuild nix-build`` against the real ``nix-build``, whole process, cold on both sides.

Run from the repository root (as root, with nix-build on PATH)::

    .venv/bin/python benchmarks/nix.py [--runs 9] [--graph-runs 1] [--floor] [--runtime NAME]

(a) ``trivial``: one derivation with no input but busybox (``graph.trivial`` in
``nix/default.nix``), built ``--runs`` times by each side, interleaved (the side going first
alternates). Each build gets a nonce of its own in its environment, so neither side has it in a
cache: every run evaluates, instantiates and builds. Prints the medians and ours/nix.

(b) ``graph``: the 50-derivation graph of ``nix/graph.nix`` (7 layers of 7 plus a top), built
cold ``--graph-runs`` times by each side with fresh nonces. Prints each time and the ratio.

Timing is ``time.perf_counter`` around ``subprocess.run`` of the whole command (what
``/usr/bin/time`` reports as elapsed). Nix runs as ``NIX_REMOTE= nix-build --option sandbox true
--option substituters ''``; ours with one ``--store`` for the whole run, warmed by one untimed
build (Nix's store already holds busybox, so ours gets its copy ingested beforehand), and with
the package's bytecode compiled first (``compileall``: an installed package has it; without it,
e.g. under ``PYTHONDONTWRITEBYTECODE=1``, every run would compile ~50 modules again). Ours must
leave /nix/store unchanged: the script reports entries that appeared during our builds.

``--floor`` first times, interleaved, the parts a trivial build cannot avoid: a bare Python
start (``-I -S``) and the venv's (``site``), importing the build path, ``nix-instantiate`` alone,
a bare ``runc run`` of a minimal bundle (busybox ``true``), and the whole ``nix-build``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_ocibuild.build.runtime import RUNTIMES

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "nix" / "default.nix"
NIX_OPTS = ["--option", "sandbox", "true", "--option", "substituters", ""]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["NIX_REMOTE"] = ""
    return env


RUNTIME = ["--runtime", "runc"]  # ours: --runtime (set by main)


def ours_cmd(store: Path, bbdir: Path, attr: str, nonce: str) -> list[str]:
    """``ocibuild nix-build`` of ``attr`` with ``nonce``."""
    return [sys.executable, "-m", "pytest_ocibuild", "nix-build", *RUNTIME, "--store", str(store),
            str(CORPUS), "-A", attr, "--arg", "bbdir", str(bbdir), "--argstr", "nonce", nonce]


def nix_cmd(bbdir: Path, attr: str, nonce: str) -> list[str]:
    """The real ``nix-build`` of ``attr`` with ``nonce``."""
    return ["nix-build", "--no-out-link", *NIX_OPTS, str(CORPUS), "-A", attr,
            "--arg", "bbdir", str(bbdir), "--argstr", "nonce", nonce]


def timed(cmd: list[str]) -> float:
    """Seconds the whole command took; exits with its stderr if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


class StoreWatch:
    """Counts /nix/store entries that appear while our builds run."""

    def __init__(self) -> None:
        self.added: set[str] = set()

    def run(self, cmd: list[str]) -> float:
        """Time ``cmd``, noting new /nix/store entries."""
        before = set(os.listdir("/nix/store"))
        elapsed = timed(cmd)
        self.added |= set(os.listdir("/nix/store")) - before
        return elapsed


def interleave(attr: str, runs: int, store: Path, bbdir: Path, run_id: str,
               watch: StoreWatch) -> tuple[list[float], list[float]]:
    """``runs`` cold builds of ``attr`` per side, alternating which side goes first; every
    build has a nonce of its own. Returns (ours, nix) in seconds."""
    ours: list[float] = []
    nix: list[float] = []
    for i in range(runs):
        for side in ("ours", "nix") if i % 2 == 0 else ("nix", "ours"):
            nonce = f"{run_id}-{attr}-{side}-{i}"
            if side == "ours":
                ours.append(watch.run(ours_cmd(store, bbdir, attr, nonce)))
            else:
                nix.append(timed(nix_cmd(bbdir, attr, nonce)))
    return ours, nix


def floor(runs: int, bbdir: Path, tmp: Path, run_id: str) -> None:
    """Median wall time of each unavoidable component of a trivial build (see the docstring)."""
    bundle = tmp / "floor-bundle"
    (bundle / "rootfs").mkdir(parents=True)
    shutil.copy2("/bin/busybox", bundle / "rootfs" / "busybox")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"].update(terminal=False, args=["/busybox", "true"])
    (bundle / "config.json").write_text(json.dumps(spec))
    imports = "import pytest_ocibuild.nix.build, pytest_ocibuild.build.executor"
    parts = {
        "python -I -S -c 0": lambda i: [sys.executable, "-I", "-S", "-c", "0"],
        "python -c 0 (venv site)": lambda i: [sys.executable, "-c", "0"],
        "python -c 'import <build path>'": lambda i: [sys.executable, "-c", imports],
        "nix-instantiate (private store)": lambda i: [
            "nix-instantiate", "--store", f"local?root={tmp / 'floor-eval'}", str(CORPUS), "-A",
            "graph.trivial", "--arg", "bbdir", str(bbdir), "--argstr", "nonce", f"{run_id}-{i}"],
        "runc run (minimal bundle)": lambda i: [
            "runc", "--root", str(tmp / "floor-runc"), "run", "--bundle", str(bundle),
            f"ocibuild-floor-{os.getpid()}-{i}"],
        "nix-build (whole)": lambda i: nix_cmd(bbdir, "graph.trivial", f"{run_id}-floor-{i}"),
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    for i in range(runs):
        for name in (list(parts) if i % 2 == 0 else list(parts)[::-1]):
            times[name].append(timed(parts[name](i)))
    print(f"floor (medians of {runs}, interleaved)")
    for name, ts in times.items():
        print(f"  {name:34} {statistics.median(ts) * 1000:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="trivial builds per side (default 9)")
    ap.add_argument("--graph-runs", type=int, default=1,
                    help="cold graph builds per side (default 1)")
    ap.add_argument("--floor", action="store_true",
                    help="first time each unavoidable component of a trivial build")
    ap.add_argument("--runtime", default="runc", choices=RUNTIMES,
                    help="our sandbox runtime (default runc)")
    args = ap.parse_args()
    RUNTIME[1] = args.runtime
    print(f"ours: --runtime {args.runtime}")
    if shutil.which("nix-build") is None:
        sys.exit("needs nix-build on PATH")
    run_id = f"{int(time.time())}-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="bench-nix-") as tmp:
        bbdir = Path(tmp) / "busybox-dir"
        bbdir.mkdir()
        shutil.copy2("/bin/busybox", bbdir / "busybox")
        store = Path(tmp) / "store"
        compileall.compile_dir(ROOT / "pytest_ocibuild", quiet=2)
        if args.floor:
            floor(args.runs, bbdir, Path(tmp), run_id)
        watch = StoreWatch()
        timed(nix_cmd(bbdir, "graph.trivial", f"{run_id}-warm-nix"))
        watch.run(ours_cmd(store, bbdir, "graph.trivial", f"{run_id}-warm-ours"))

        ours, nix = interleave("graph.trivial", args.runs, store, bbdir, run_id, watch)
        mo, mn = statistics.median(ours), statistics.median(nix)
        print(f"trivial (cold, {args.runs} runs each, interleaved)")
        print(f"  ours  median {mo * 1000:8.1f} ms   runs " +
              " ".join(f"{t * 1000:.0f}" for t in ours))
        print(f"  nix   median {mn * 1000:8.1f} ms   runs " +
              " ".join(f"{t * 1000:.0f}" for t in nix))
        print(f"  ratio ours/nix {mo / mn:.2f} (target <= 1.0)")

        gours, gnix = interleave("graph.top", args.graph_runs, store, bbdir, run_id, watch)
        go, gn = statistics.median(gours), statistics.median(gnix)
        print(f"graph (50 derivations, cold, {args.graph_runs} run(s) each)")
        print(f"  ours  {go:8.2f} s   runs " + " ".join(f"{t:.2f}" for t in gours))
        print(f"  nix   {gn:8.2f} s   runs " + " ".join(f"{t:.2f}" for t in gnix))
        print(f"  ratio ours/nix {go / gn:.2f}")
        if watch.added:
            print(f"WARNING: {len(watch.added)} /nix/store entries appeared during our builds, "
                  f"e.g. {sorted(watch.added)[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
