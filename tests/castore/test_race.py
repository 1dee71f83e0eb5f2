"""Many processes writing the same objects into one LocalStore at once (Nixery's bug).

Nixery's shared ``staging/<hash>`` name let one writer rename another's staging file away
("rename staging/<hash> … no such file or directory"). Here 16 processes start together on a
fresh root and write identical blobs, directories and executable twins.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path

import pytest

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Directory, FileNode, SymlinkNode
from pytest_ocibuild.castore.store import put_blob, read_blob

WORKERS = 16


def _payloads() -> list[bytes]:
    # Mixed sizes so that writes of one object overlap in time across processes.
    return [bytes([i]) * (1 + (i * 7919) % (512 << 10)) for i in range(48)] + [b""]


def _directories(digests: list[Digest]) -> list[Directory]:
    sizes = [len(p) for p in _payloads()]
    dirs = []
    for i in range(0, len(digests), 6):
        entries = {
            f"f{j}".encode(): FileNode(d, sizes[i + j]) for j, d in enumerate(digests[i : i + 6])
        }
        entries[b"link"] = SymlinkNode(f"f{i}".encode())
        dirs.append(Directory(entries))
    dirs.append(Directory({f"d{k}".encode(): d.node() for k, d in enumerate(dirs)}))
    return dirs


def _worker(root: str, tmpfile: bool, barrier: mp.synchronize.Barrier,
            results: mp.Queue) -> None:
    try:
        barrier.wait(timeout=60)
        store = LocalStore(Path(root) / "store", tmpfile=tmpfile)  # root creation races too
        assert store.tmpfile == tmpfile
        blobs = [put_blob(store, p).hex for p in _payloads()]
        digests = [Digest.from_hex(b) for b in blobs]
        dirs = [store.put_directory(d).hex for d in _directories(digests)]
        for b in blobs[:8]:
            assert store.blob_path(Digest.from_hex(b), executable=True) is not None
        results.put(("ok", blobs, dirs))
    except BaseException:
        results.put(("error", traceback.format_exc(), []))


@pytest.mark.parametrize("tmpfile", [True, False], ids=["tmpfile", "named"])
def test_concurrent_writers_same_objects(tmp_path: Path, tmpfile: bool) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    args = (str(tmp_path), tmpfile, barrier, results)
    procs = [ctx.Process(target=_worker, args=args) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [o[1] for o in outcomes if o[0] != "ok"]
    assert not errors, errors[0]
    assert all(o[1:] == outcomes[0][1:] for o in outcomes)

    store = LocalStore(tmp_path / "store")
    payloads = _payloads()
    blobs = [Digest.from_hex(h) for h in outcomes[0][1]]
    assert blobs == [Digest.of(p) for p in payloads]
    for digest, payload in zip(blobs, payloads, strict=True):
        assert read_blob(store, digest) == payload  # verifies the digest too
    assert set(store.iter_blobs()) == set(blobs)
    expected_dirs = _directories(blobs)
    assert set(store.iter_directories()) == {d.digest for d in expected_dirs}
    for d in expected_dirs:
        assert store.get_directory(d.digest) == d
    for digest in blobs[:8]:
        twin = store.blob_path(digest, executable=True)
        assert twin is not None and twin.read_bytes() == read_blob(store, digest)
    assert store.staging_files() == []
