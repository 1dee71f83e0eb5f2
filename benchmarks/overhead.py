"""Per-build overhead of Executor.build against a bare ``runc run`` of an equivalent bundle.

Run as root from the repository root::

    .venv/bin/python benchmarks/overhead.py [--runs 30] [--inputs materialize|fuse]

Both sides run the same trivial build (busybox ``sh -c 'echo hi > out'``), interleaved:

* ``bare``: a bundle made once (config.json by make_spec, busybox copied into inputs/), then
  ``runc run`` of it, timed around the subprocess;
* ``executor``: ``Executor.build`` without a result cache: spec, bundle, inputs provided from
  the castore, ``runc run`` (through the executor's long-lived reaper process, started by the
  warm-up), output ingest and refscan, container deletion, bundle removal. As in any
  session, the bundle's ``/dev`` skeleton and its root filesystem (``/``, emptied ``/tmp``)
  come from what earlier builds left for reuse (see bundle.make_bundle, root_pool).

* ``bare-nolimits``: the same bare bundle without its limits (no ``linux.resources``, only
  ``RLIMIT_NOFILE``): what the limits (cgroup pids and memory, RLIMIT_FSIZE) cost runc.

Prints the medians, executor/bare (target: at most 1.5) and both against bare-nolimits.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_ocibuild.build.bundle import make_bundle
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.runc import RuncRuntime
from pytest_ocibuild.build.spec import host_network_files, make_spec
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--inputs", default="materialize", choices=["materialize", "fuse"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocibuild-overhead-") as tmp:
        work = Path(tmp)
        store = LocalStore(work / "store")
        busybox = ingest_path(store, Path("/bin/busybox"))
        request = BuildRequest(inputs={"busybox": busybox},
                               command_args=("/inputs/busybox", "sh", "-c", "echo hi > out"),
                               outputs=("build/out",))
        state = work / "runc-state"
        executor = Executor(store, inputs=open_input_provider(args.inputs),
                            runtime=RuncRuntime("runc", state_dir=state),
                            bundle_root=work / "bundles")
        spec = make_spec(request, id_maps=IdMaps.detect(), network_files=host_network_files())
        unlimited = copy.deepcopy(spec)
        unlimited["linux"].pop("resources", None)
        unlimited["process"]["rlimits"] = [r for r in unlimited["process"]["rlimits"]
                                           if r["type"] == "RLIMIT_NOFILE"]
        bundles = {"bare": work / "bare", "bare-nolimits": work / "bare-nolimits"}
        for name, s in (("bare", spec), ("bare-nolimits", unlimited)):
            layout = make_bundle(request, s, bundles[name])
            shutil.copy("/bin/busybox", layout.inputs_dir / "busybox")

        def runner(name: str) -> Callable[[int], float]:
            def run(i: int) -> float:
                t0 = time.perf_counter()
                subprocess.run(["runc", "--root", str(state), "run", "--bundle",
                                str(bundles[name]), f"{name}-{i}"], stdin=subprocess.DEVNULL,
                               capture_output=True, check=True)
                return time.perf_counter() - t0
            return run

        bare, free = runner("bare"), runner("bare-nolimits")

        def ours(_: int) -> float:
            t0 = time.perf_counter()
            executor.build(request)
            return time.perf_counter() - t0

        bare(-1), free(-1), ours(-1)  # warm-up: page cache, runc binary, blob twins
        times: dict[str, list[float]] = {"bare": [], "bare-nolimits": [], "executor": []}
        for i in range(args.runs):
            order = [("bare", bare), ("bare-nolimits", free), ("executor", ours)]
            for name, fn in order if i % 2 == 0 else reversed(order):
                times[name].append(fn(i))
    b, f, e = (statistics.median(times[k]) for k in ("bare", "bare-nolimits", "executor"))
    print(f"runs: {args.runs} each, inputs: {args.inputs}")
    for label, name, med in (("bare runc run", "bare", b), ("bare, no limits", "bare-nolimits", f),
                             ("Executor.build", "executor", e)):
        print(f"{label:<18} median {med * 1000:7.1f} ms  (min {min(times[name]) * 1000:.1f})")
    print(f"executor / bare    {e / b:.2f}  (target <= 1.5)")
    print(f"executor / bare, no limits  {e / f:.2f}")
    print(f"bare / bare, no limits      {b / f:.2f}  (what the limits cost runc)")


if __name__ == "__main__":
    main()
