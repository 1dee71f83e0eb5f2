"""SIGKILL ``ocibuild build`` clients at random moments of short builds writing outputs.

After each kill (before the next client starts, whose start-up purge would hide leftovers)
nothing of the killed client may be left within seconds: no container, no process, no reaper,
no mount, no bundle directory; no purge is called. At the end ``store verify`` finds no
corrupt object and no record missing one. The random seed is printed; set
``OCIBUILD_CRASH_SEED`` to replay it.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hostile.test_client_death import (
    CLEANUP_LIMIT,
    REPO,
    Place,
    _needs_runc,
    wait_until,
    write_request,
)

__all__ = ["_needs_runc"]
pytestmark = pytest.mark.runc
KILLS = 24
SCRIPT = ("sleep 0.3; mkdir out; i=0; while [ $i -lt 24 ]; do "
          "head -c 65536 /dev/urandom > out/f$i; i=$((i+1)); done; echo $NONCE > out/nonce")


def client(place: Place, req: Path, provider: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest_ocibuild", "build", str(req), "--timeout", "30",
         "--inputs", provider], cwd=REPO, env=place.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def test_sigkill_clients_at_random_moments(tmp_path: Path) -> None:
    place = Place(tmp_path)
    seed = int(os.environ.get("OCIBUILD_CRASH_SEED") or secrets.randbits(32))
    rng = random.Random(seed)
    argv = ["/inputs/busybox", "sh", "-c", SCRIPT]

    def request(name: str) -> Path:
        path = write_request(tmp_path / f"{name}.yaml", argv)
        path.write_text(path.read_text() + f"environment_vars: {{NONCE: {name}}}\n")
        return path

    start = time.monotonic()
    whole = client(place, request("undisturbed"), "materialize")
    assert whole.wait(120) == 0
    total = time.monotonic() - start  # start-up, build, ingest, commit

    outcomes: list[tuple[float, bool, float]] = []  # (delay, had a container, cleanup secs)
    left: list[tuple[int, dict[str, list[str]]]] = []
    for i in range(KILLS):
        provider = "fuse" if i % 4 == 3 else "materialize"
        req = request(f"kill-{i}")
        proc = client(place, req, provider)
        delay = rng.uniform(0.15, 1.1) * total
        time.sleep(delay)
        had = bool(place.runtime.list())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pid, markers = proc.pid, [str(req)]
        took = wait_until(lambda: not place.leftovers(pid, markers), CLEANUP_LIMIT)  # noqa: B023
        if leftovers := place.leftovers(pid, markers):
            left.append((i, leftovers))
        outcomes.append((round(delay, 2), had, round(took, 2)))

    print(f"seed {seed}; whole build {total:.2f}s; (delay, container at kill, cleanup s): "
          f"{outcomes}")
    assert left == [], f"seed {seed}: left after {CLEANUP_LIMIT}s: {left}"
    assert sum(had for _, had, _ in outcomes) >= 3, "too few kills hit a running container"
    assert sum(not had for _, had, _ in outcomes) > 0, "every kill hit a running container"
    assert place.runtime.list() == []
    verify = subprocess.run(
        [sys.executable, "-m", "pytest_ocibuild", "store", "verify", "--json"], cwd=REPO,
        env=place.env, capture_output=True, text=True, timeout=120)
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["corrupt"] == [] and report["missing"] == [], \
        report
    assert report["checked"] > 0


def test_list_and_purge_while_containers_come_and_go(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``runc list`` failed (ENOENT) when a container was deleted while it listed; listing
    and purging (what every start does) now tolerate containers coming and going."""
    import threading

    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.build.lifecycle import purge
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.castore.ingest import ingest_path

    place = Place(tmp_path)
    for key in ("XDG_RUNTIME_DIR", "OCIBUILD_STORE"):
        monkeypatch.setenv(key, place.env[key])
    ex = open_executor(store=place.store, cache=False)
    built: list[object] = []

    def builds(tag: str) -> None:
        for i in range(10):
            req = write_request(tmp_path / f"{tag}{i}.yaml", ["/inputs/busybox", "sh", "-c",
                                                              f"echo {tag}{i} > out"])
            try:
                built.append(ex.build(load_request(req, ingest=lambda p: ingest_path(
                    ex.store, p))))
            except Exception as e:  # reported below
                built.append(e)

    threads = [threading.Thread(target=builds, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    looks = 0
    while any(t.is_alive() for t in threads):
        ex.runtime.list()  # type: ignore[attr-defined]
        purge(store_root=place.store, bundle_root=ex.bundle_root, runtime=ex.runtime)
        looks += 1
    for t in threads:
        t.join()
    errors = [b for b in built if isinstance(b, Exception)]
    assert errors == [] and len(built) == 20, errors
    assert looks > 20, looks
    assert ex.runtime.list() == []  # type: ignore[attr-defined]
