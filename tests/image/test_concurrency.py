"""The layer cache under concurrency: threads and processes exporting overlapping closures
into one store make each layer once and never a corrupt blob; a naive writer (Nixery's
staging/<hash> then rename) run the same way fails as Nixery did."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.image.cache import LayerCache, layer_key
from pytest_ocibuild.image.export import Options, export_image, layer_cache
from pytest_ocibuild.image.layering import group_layers
from pytest_ocibuild.image.tarball import Written, write_layer
from tests.image.conftest import make_items, store_path

# 14 packages over 4 shared libraries; targets are overlapping sets of top-level packages
GRAPH = {
    **{f"lib{i}": [f"lib{j}" for j in range(i)] for i in range(4)},
    **{f"pkg{i}": [f"lib{i % 4}", f"lib{(i + 1) % 4}"] for i in range(10)},
}
SIZES = {n: 40_000 + 9_000 * i for i, n in enumerate(GRAPH)}
POPULARITY = {f"lib{i}": 200 for i in range(4)}
TARGETS = [[f"pkg{(s + k) % 10}" for k in range(4)] for s in range(10)]
THREADS, PROCESSES, ROUNDS = 4, 3, 2


def _exports(store_dir: Path, work: Path, worker: str) -> tuple[int, dict[int, str]]:
    """One worker: ingest the trees (into the shared store), export every target ROUNDS
    times with THREADS threads; (layers this worker made, target -> manifest digest)."""
    store = LocalStore(store_dir)
    items = make_items(store, work / worker, GRAPH, sizes=SIZES, random=True)
    cache = layer_cache(store, store_dir)
    jobs = [(t, r) for r in range(ROUNDS) for t in range(len(TARGETS))]
    jobs = jobs[int(worker[-1]) % len(jobs):] + jobs[:int(worker[-1]) % len(jobs)]

    def export(job: tuple[int, int]) -> tuple[int, str]:
        t, r = job
        roots = [store_path(n) for n in TARGETS[t]]
        out = work / "out" / f"{worker}-{t}-{r}"
        done = export_image(cache, items, roots, out,
                            Options(max_layers=5, popularity=POPULARITY, workers=2))
        return t, done.image.manifest

    with ThreadPoolExecutor(THREADS) as pool:
        manifests = dict(pool.map(export, jobs))
    return cache.made, manifests


def _check_blob(path: Path) -> None:
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == path.name, f"corrupt blob {path}"


def test_threads_and_processes_share_one_store(tmp_path: Path) -> None:
    store_dir, work = tmp_path / "store", tmp_path / "work"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=ctx) as procs:
        remote = [procs.submit(_exports, store_dir, work, f"proc{i}")
                  for i in range(PROCESSES)]
        local = _exports(store_dir, work, "main0")  # threads of this process meanwhile
        results = [local, *(f.result() for f in remote)]
    # every worker saw the same image for each target
    for t in range(len(TARGETS)):
        assert len({m[t] for _, m in results}) == 1
    # each layer was made exactly once in all, and recorded
    image = store_dir / "image"
    records = sorted((image / "layers").iterdir())
    assert sum(made for made, _ in results) == len(records) > len(TARGETS)
    # no blob is corrupt, every record's blob is there and is the tar it says
    for blob in (image / "blobs" / "sha256").iterdir():
        _check_blob(blob)
    for rec in records:
        d = json.loads(rec.read_bytes())
        with gzip.open(image / "blobs" / "sha256" / d["digest"]) as f:
            tar = f.read()
        assert (hashlib.sha256(tar).hexdigest(), len(tar)) == (d["diff_id"], d["tar_size"])
    # every exported layout is whole
    layouts = sorted((work / "out").iterdir())
    assert len(layouts) == (PROCESSES + 1) * ROUNDS * len(TARGETS)
    for out in layouts:
        for blob in (out / "blobs" / "sha256").iterdir():
            _check_blob(blob)
        assert not (out / ".tmp").exists()
    assert list((image / "tmp").iterdir()) == []  # no staging file left behind


class NaiveCache(LayerCache):
    """Nixery's original code path: check, write ``staging/<key>``, rename; no lock."""

    def get(self, trees: Sequence[tuple[str, Node]]) -> Written:
        key = layer_key(trees)
        found = self.lookup(key)
        if found is not None:
            return found
        staging = self.tmp / key  # derived from the key: shared by concurrent writers
        with open(staging, "wb") as out:
            written = write_layer(self.store, trees, out)
        os.rename(staging, self.blob_path(written.digest))
        self.record(key, written)
        return written


def _race(cache: LayerCache, trees: list[tuple[str, Node]], writers: int) -> list[BaseException]:
    """``writers`` threads asking for the same missing layer at once; the errors raised."""
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            cache.get(trees)
        except BaseException as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_naive_writer_fails_as_nixery_did_and_the_cache_does_not(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    sizes = {n: 1_500_000 for n in GRAPH}  # a layer that takes a while to gzip
    items = make_items(store, tmp_path / "trees", GRAPH, sizes=sizes, random=True)
    roots = [store_path(n) for n in TARGETS[0]]
    layers = group_layers(items, roots, popularity=POPULARITY)
    trees = [(p, items[p].node) for p in max(layers, key=lambda lay: len(lay.contents))
             .contents]
    failures: list[BaseException] = []
    for attempt in range(10):
        naive = NaiveCache(store, tmp_path / f"naive{attempt}")
        failures = _race(naive, trees, 6)
        if failures:
            break
    assert failures, "the naive writer never lost a rename race in 10 attempts"
    assert all(isinstance(e, FileNotFoundError) for e in failures), failures
    message = str(failures[0])
    assert "No such file or directory" in message and f"tmp/{layer_key(trees)}" in message
    for attempt in range(3):  # the same race against the real cache: no error, one writer
        cache = LayerCache(store, tmp_path / f"real{attempt}")
        assert _race(cache, trees, 6) == []
        assert cache.made == 1
        [blob] = (cache.blobs).iterdir()
        _check_blob(blob)
        with contextlib.suppress(FileNotFoundError):
            assert list(cache.tmp.iterdir()) == []
