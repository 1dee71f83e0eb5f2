"""Per-build overhead of Executor.build against a bare run of an equivalent bundle.

Run as root from the repository root::

    .venv/bin/python benchmarks/overhead.py [--runs 30] [--inputs materialize|fuse]
                                            [--runtime runc|crun|runsc|bwrap]

``bare`` is the command line the backend itself runs for a build (``runc run``; for bwrap
the translated ``bwrap ...``), started directly, in the foreground, with nothing around it.

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
import os
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
from pytest_ocibuild.build.runtime import RUNTIMES, open_runtime
from pytest_ocibuild.build.spec import host_network_files, make_spec
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--inputs", default="materialize", choices=["materialize", "fuse"])
    parser.add_argument("--runtime", default="runc", choices=RUNTIMES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocibuild-overhead-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)  # as the per-user bundle root is: a 0700 one costs bwrap an alias
        store = LocalStore(work / "store")
        busybox = ingest_path(store, Path("/bin/busybox"))
        request = BuildRequest(inputs={"busybox": busybox},
                               command_args=("/inputs/busybox", "sh", "-c", "echo hi > out"),
                               outputs=("build/out",))
        state = work / "runc-state"
        executor = Executor(store, inputs=open_input_provider(args.inputs),
                            runtime=open_runtime(args.runtime, state_dir=state),
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

        bare_runtime = open_runtime(args.runtime, state_dir=state)

        def runner(name: str) -> Callable[[int], float]:
            def run(i: int) -> float:
                argv, actions = bare_command(bare_runtime, bundles[name], f"{name}-{i}",
                                             work / "runtime.log")
                t0 = time.perf_counter()
                spawn(argv, actions)
                return time.perf_counter() - t0
            return run

        bare, free = runner("bare"), runner("bare-nolimits")

        def ours(_: int) -> float:
            t0 = time.perf_counter()
            executor.build(request)
            return time.perf_counter() - t0

        order = [("bare", bare), ("bare-nolimits", free), ("executor", ours)]
        if args.runtime == "bwrap":  # the baseline: bwrap alone, same command
            order.append(("plain-bwrap", plain_bwrap(work)))
        for _, fn in order:
            fn(-1)  # warm-up: page cache, the runtime's binary, blob twins
        times: dict[str, list[float]] = {name: [] for name, _ in order}
        for i in range(args.runs):
            for name, fn in order if i % 2 == 0 else reversed(order):
                times[name].append(fn(i))
    b, f, e = (statistics.median(times[k]) for k in ("bare", "bare-nolimits", "executor"))
    print(f"runs: {args.runs} each, inputs: {args.inputs}, runtime: {args.runtime}")
    for label, name, med in ((f"bare {args.runtime}", "bare", b),
                             ("bare, no limits", "bare-nolimits", f),
                             ("Executor.build", "executor", e)):
        print(f"{label:<18} median {med * 1000:7.1f} ms  (min {min(times[name]) * 1000:.1f})")
    print(f"executor / bare    {e / b:.2f}  (target <= 1.5)")
    print(f"executor / bare, no limits  {e / f:.2f}")
    print(f"bare / bare, no limits      {b / f:.2f}  (what the limits cost {args.runtime})")
    if "plain-bwrap" in times:
        p = statistics.median(times["plain-bwrap"])
        print(f"plain bwrap        median {p * 1000:7.1f} ms  (min "
              f"{min(times['plain-bwrap']) * 1000:.1f}): --unshare-all, 3 binds, /proc, /dev")
        print(f"executor / plain bwrap      {e / p:.2f}  (target <= 2)")


def plain_bwrap(work: Path) -> Callable[[int], float]:
    """``bwrap`` alone running the same command in plain directories of the caller's: no
    seccomp, no limits, no id change, nothing around it."""
    root, scratch, inputs = (work / "plain" / d for d in ("root", "scratch", "inputs"))
    for d in (root, scratch, inputs):
        d.mkdir(parents=True)
    shutil.copy("/bin/busybox", inputs / "busybox")
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent",
            "--bind", str(root), "/", "--bind", str(scratch), "/build",
            "--ro-bind", str(inputs), "/inputs", "--proc", "/proc", "--dev", "/dev",
            "--chdir", "/build", "/inputs/busybox", "sh", "-c", "echo hi > out"]

    def run(_: int) -> float:
        t0 = time.perf_counter()
        spawn(argv, [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)])
        return time.perf_counter() - t0
    return run


def bare_command(runtime: object, bundle: Path, cid: str, log: Path,
                 ) -> tuple[list[str], list[tuple[object, ...]]]:
    """The backend's own command for ``bundle`` (its reaper job) in the foreground, with the
    ``posix_spawn`` file actions the reaper gives it: stdin /dev/null, stdout and stderr (here
    /dev/null), fd 3 the runtime's log (here ``log``), and the files the job names (bwrap's
    seccomp filter)."""
    assert runtime.unavailable_reason() is None  # type: ignore[attr-defined]  # finds its tools
    job = runtime._prepare(bundle, cid)  # type: ignore[attr-defined]
    argv = list(job["argv"])
    if "--detach" in argv:  # foreground: the runtime waits and deletes it itself
        argv.remove("--detach")
    if "--pid-file" in argv:
        i = argv.index("--pid-file")
        del argv[i:i + 2]
    actions: list[tuple[object, ...]] = [
        *((os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)),
        (os.POSIX_SPAWN_OPEN, 3, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        *((os.POSIX_SPAWN_OPEN, int(fd), path, os.O_RDONLY, 0)
          for fd, path in job.get("files", {}).items())]
    return argv, actions


def spawn(argv: list[str], actions: list[tuple[object, ...]]) -> None:
    """Run ``argv`` as the reaper would start it and wait; CalledProcessError unless 0."""
    pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), argv)


if __name__ == "__main__":
    main()
