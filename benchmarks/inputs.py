"""Compare the input providers (``fuse`` vs ``materialize``) on typical build inputs.

Run from the repository root (as root, with /dev/fuse)::

    .venv/bin/python benchmarks/inputs.py [--repeat 7]

Profiles (in a LocalStore on the same filesystem as the inputs directory):

* ``busybox``: a ~2 MB executable (/bin/busybox if present), ~100 applet symlinks to it and ~200
  small files (0.1-8 KiB) in nested directories;
* ``many-small``: ~2000 small files in 40 nested directories.

For each provider (``fuse-mt`` is FUSE with libfuse's multi-threaded loop) and profile it times,
as the median of ``--repeat`` runs: the context alone (setup + teardown), the context plus
reading every file, and the context plus reading a few files (the executable and 4 small files:
what a typical build touches).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_ocibuild.build.fuse_inputs import FuseInputs
from pytest_ocibuild.build.inputs import InputProvider, open_input_provider
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from tests.build.trees import Exec, Link, Spec, put_tree


def busybox_profile(rng: random.Random) -> tuple[Spec, list[str]]:
    exe = Path("/bin/busybox")
    data = exe.read_bytes() if exe.is_file() else rng.randbytes(2_000_000)
    spec: dict[str, object] = {"bin/busybox": Exec(data)}
    for i in range(100):
        spec[f"bin/applet{i:03}"] = Link("busybox")
    for i in range(200):
        spec[f"share/d{i % 8}/s{i % 3}/f{i:03}.txt"] = rng.randbytes(rng.randint(100, 8192))
    few = ["bin/busybox", "share/d0/s0/f000.txt", "share/d1/s1/f001.txt", "share/d2/s2/f002.txt"]
    return spec, [*few, "share/d3/s0/f003.txt"]  # type: ignore[return-value]


def many_small_profile(rng: random.Random) -> tuple[Spec, list[str]]:
    spec: dict[str, object] = {}
    for i in range(2000):
        spec[f"pkg{i % 10}/lib{i % 4}/f{i:04}.py"] = rng.randbytes(rng.randint(100, 4096))
    few = [k for k in list(spec)[:5]]
    return spec, few  # type: ignore[return-value]


def read_all(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    total += len(f.read())
    return total


def read_few(root: Path, paths: list[str]) -> int:
    return sum(len((root / p).read_bytes()) for p in paths)


def time_interleaved(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds per run of each callable; rounds alternate between them so load hits all alike."""
    for run in runs.values():
        run()  # warm-up (page cache, imports)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - t)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(42)
    work = Path(tempfile.mkdtemp(prefix="ocibuild-bench-inputs-"))
    store = LocalStore(work / "store", fsync=False)
    at = work / "inputs"
    at.mkdir()
    providers: dict[str, InputProvider] = {
        "fuse": open_input_provider("fuse"),
        "fuse-mt": FuseInputs(nothreads=False),
        "materialize": open_input_provider("materialize"),
    }
    print(f"ms per run, median (min) of {args.repeat} interleaved runs; LocalStore in {work}")
    names = list(providers)
    print(f"{'profile':<11} {'case':<15}" + "".join(f"{n:>16}" for n in names) + "  fuse/mat")
    for pname, make in (("busybox", busybox_profile), ("many-small", many_small_profile)):
        spec, few = make(rng)
        inputs: dict[str, Node] = {"pkg": put_tree(store, spec)}
        pkg = at / "pkg"
        cases: dict[str, Callable[[], object]] = {
            "setup+teardown": lambda: None,
            "+ read all": lambda pkg=pkg: read_all(pkg),
            "+ read 5 files": lambda pkg=pkg, few=few: read_few(pkg, few),
        }
        for cname, body in cases.items():

            def run(prov: InputProvider, body=body, inputs=inputs) -> None:
                with prov.provide(store, inputs, at):
                    body()

            samples = time_interleaved(
                {n: functools.partial(run, p) for n, p in providers.items()}, args.repeat
            )
            med = {n: statistics.median(v) * 1000 for n, v in samples.items()}
            low = {n: min(v) * 1000 for n, v in samples.items()}
            cells = "".join(f"{f'{med[n]:.1f} ({low[n]:.1f})':>16}" for n in names)
            print(f"{pname:<11} {cname:<15}{cells}  {med['fuse'] / med['materialize']:>8.2f}")
    assert os.listdir(at) == []
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
