"""Benchmark: ingest_path into a fresh LocalStore vs ``nix-store --add`` into a chroot store.

Builds a deterministic tree of mixed file sizes (many small, some medium, a few large, plus
symlinks, executables and duplicates), syncs it to disk, then times each importer in its own
subprocess and reports wall time and peak RSS (from ``wait4``). ``ours`` is a LocalStore with
its default settings (what users get: small blobs and directories packed, buffered writes, no
per-object fsync, like nix-store); ``ours-fsync`` opts into fsyncing every object
(``OCIBUILD_FSYNC=1``) and ``ours-direct`` into O_DIRECT writes of large blobs
(``OCIBUILD_DIRECT=1``). Cold runs write into an empty store; ``-warm`` runs add the same tree
again to a store that already holds it::

    .venv/bin/python benchmarks/ingest.py --size-mb 1024

Nix writes into ``--store local?root=<tmp>/nix`` (a chroot store), never the real /nix/store.
Everything is created under a temporary directory that is removed at the end (``--keep``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

CHILD = """
import sys
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
node = ingest_path(LocalStore(sys.argv[1]), sys.argv[2])
print(node.digest.hex)
"""


def content(seed: str, size: int, out: Path) -> None:
    """Write ``size`` deterministic pseudo-random bytes (blake3 XOF of ``seed``)."""
    h = blake3.blake3(seed.encode())
    with open(out, "wb") as f:
        for off in range(0, size, 8 << 20):
            f.write(h.digest(length=min(8 << 20, size - off), seek=off))


def build_tree(root: Path, size_mb: int, seed: int = 1) -> tuple[int, int]:
    """Create the tree; return (files, bytes). Budget: 15% small, 40% medium, 45% large."""
    rng = random.Random(seed)
    budget = size_mb << 20
    sizes: list[int] = []
    classes = ((0.15, 0, 16 << 10), (0.40, 64 << 10, 4 << 20), (0.45, 32 << 20, 160 << 20))
    for share, lo, hi in classes:
        left = int(budget * share)
        while left > 0:
            n = min(rng.randint(lo, hi), left)
            sizes.append(n)
            left -= max(n, 1)
    rng.shuffle(sizes)
    root.mkdir(parents=True)
    dirs = [root]
    files = total = 0
    for i, size in enumerate(sizes):
        if i % 40 == 0:  # new directory every 40 files, nested up to 5 deep
            parent = rng.choice([d for d in dirs if len(d.relative_to(root).parts) < 5])
            d = parent / f"d{len(dirs)}"
            d.mkdir()
            dirs.append(d)
        path = dirs[-1] / f"f{i}.{'bin' if size > 1 << 20 else 'txt'}"
        if i % 97 == 3 and size < 1 << 20:  # duplicates exercise dedup
            content("dup", size % 4096, path)
        else:
            content(f"{seed}:{i}", size, path)
        if i % 13 == 0:
            os.chmod(path, 0o755)
        if i % 29 == 0:
            os.symlink(path.name, path.with_name(path.name + ".link"))
        files += 1
        total += os.path.getsize(path)
    (dirs[1] / "empty-dir").mkdir()
    return files, total


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes, CPU seconds, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}): {err.decode(errors='replace')}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss * 1024, cpu, out.decode().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="tree size (default 1024)")
    ap.add_argument("--workdir", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-nix", action="store_true", help="skip nix-store")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each importer (default 3)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ocibuild-bench-", dir=args.workdir))
    try:
        tree = work / "tree"
        t0 = time.perf_counter()
        files, total = build_tree(tree, args.size_mb)
        os.sync()
        print(f"tree: {files} files, {total / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f}s")

        nix = shutil.which("nix-store")
        env = {k: v for k, v in os.environ.items()
               if k not in ("NIX_REMOTE", "OCIBUILD_FSYNC", "OCIBUILD_DIRECT")}
        envs = {"ours-fsync": {**env, "OCIBUILD_FSYNC": "1"},
                "ours-direct": {**env, "OCIBUILD_DIRECT": "1"}}
        ours = lambda d: [sys.executable, "-c", CHILD, str(d), str(tree)]  # noqa: E731
        commands = {"ours": ours, "ours-fsync": ours, "ours-direct": ours}
        if nix and not args.no_nix:
            commands["nix"] = lambda d: [nix, "--store", f"local?root={d}", "--add", str(tree)]
        labels = list(commands)
        # "-warm": the same tree again into the store filled by the first cold run
        runs: dict[str, list[tuple[float, int, float, str]]] = {
            k: [] for k in labels + [f"{x}-warm" for x in ("ours", "nix") if x in labels]
        }
        for r in range(args.repeat):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:  # rotate order
                label_env = envs.get(label, env)
                runs[label].append(run(commands[label](work / f"{label}-{r}"), label_env))
                os.sync()  # do not bill the next run for this one's writeback
        for _ in range(args.repeat):
            for label in labels:
                if f"{label}-warm" in runs:
                    runs[f"{label}-warm"].append(run(commands[label](work / f"{label}-0"), env))
        results = {k: min(v) for k, v in runs.items()}  # best wall time of the repeats
        for label, (wall, _, cpu, out) in results.items():
            rate = total / 2**20 / wall
            mib = max(r[1] for r in runs[label]) / 2**20
            walls = " ".join(f"{r[0]:.2f}" for r in runs[label])
            print(f"{label:13s} best {wall:6.2f}s {rate:5.0f} MiB/s  cpu {cpu:5.2f}s  peak RSS"
                  f" {mib:5.1f} MiB  runs [{walls}]  {out[:24]}")
        if "nix" in results:
            ratio = results["nix"][0] / results["ours"][0]
            verdict = "ok" if ratio >= 2 else "below target"
            print(f"ratio nix/ours = {ratio:.2f}x (target >= 2x: {verdict})")
            ratio = results["nix"][0] / results["ours-fsync"][0]
            print(f"ratio nix/ours-fsync = {ratio:.2f}x (opt-in fsync of every object)")
            ratio = results["nix"][0] / results["ours-direct"][0]
            print(f"ratio nix/ours-direct = {ratio:.2f}x (opt-in O_DIRECT for large blobs)")
            ratio = results["nix-warm"][0] / results["ours-warm"][0]
            print(f"ratio nix-warm/ours-warm = {ratio:.2f}x (re-adding an unchanged tree)")
        rss = max(r[1] for r in runs["ours"]) / 2**20
        print(f"our peak RSS = {rss:.1f} MiB (target <= 100 MiB: {'ok' if rss <= 100 else 'over'})")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
