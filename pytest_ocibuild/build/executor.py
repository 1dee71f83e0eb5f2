"""Executor: request -> spec -> bundle -> inputs -> runc -> ingest outputs -> refscan -> Build."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import threading
from pathlib import Path

from pytest_ocibuild.build.bundle import make_bundle
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.inputs import InputProvider, open_input_provider
from pytest_ocibuild.build.refscan import scan_path
from pytest_ocibuild.build.request import Build, BuildRequest
from pytest_ocibuild.build.runtime import Runtime, open_runtime
from pytest_ocibuild.build.slots import Slots
from pytest_ocibuild.build.spec import host_network_files, make_spec
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import Store, open_store
from pytest_ocibuild.errors import BuildFailed, RuntimeUnavailable

CONTAINER_PREFIX = "ocibuild-"
LOG_TAIL_LINES = 25
_counter = itertools.count()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def remove_tree(path: Path) -> None:
    """Delete a bundle even where the build left read-only directories."""

    def onerror(func: object, p: str, _exc: object) -> None:
        parent = os.path.dirname(p)
        for target in (parent, p):
            try:
                st = os.lstat(target)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(target, st.st_mode | stat.S_IRWXU)
            except OSError:
                pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=onerror)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=onerror)


class Executor:
    """Runs BuildRequests in OCI containers over a castore; thread-safe."""

    def __init__(
        self,
        store: Store,
        *,
        inputs: InputProvider,
        runtime: Runtime,
        bundle_root: Path,
        keep_bundles: bool = False,
        timeout: float | None = None,
        max_parallel: int | None = None,
        id_maps: IdMaps | None = None,
    ) -> None:
        self.store = store
        self.inputs = inputs
        self.runtime = runtime
        self.bundle_root = Path(bundle_root)
        self.keep_bundles = keep_bundles
        self.timeout = timeout
        self.max_parallel = max_parallel or os.cpu_count() or 1
        self._id_maps = id_maps
        self._slots = Slots(self.bundle_root / "slots", self.max_parallel)
        self._lock = threading.Lock()

    @property
    def id_maps(self) -> IdMaps:
        """The uid/gid maps builds run with (detected lazily from this host)."""
        with self._lock:
            if self._id_maps is None:
                self._id_maps = IdMaps.detect()
            return self._id_maps

    def spec(self, request: BuildRequest) -> dict:
        """The OCI config.json a build of ``request`` uses."""
        return make_spec(request, id_maps=self.id_maps, network_files=host_network_files())

    def build(
        self, request: BuildRequest, *, timeout: float | None = None, log: Path | None = None
    ) -> Build:
        """Run ``request``; return the Build or raise BuildFailed / RuntimeUnavailable."""
        reason = self.runtime.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        spec = self.spec(request)
        timeout = timeout if timeout is not None else self.timeout
        cid = f"{CONTAINER_PREFIX}{os.getpid()}-{next(_counter)}-{request.digest.hex[:12]}"
        bundle_dir = self.bundle_root / cid
        log_path = log or self.bundle_root / "logs" / f"{cid}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        with self._slots.acquire():
            try:
                layout = make_bundle(request, spec, bundle_dir)
                with self.inputs.provide(self.store, request.inputs, layout.inputs_dir):
                    status = self.runtime.run(bundle_dir, cid, log=log_path, timeout=timeout)
                if status.timed_out:
                    raise BuildFailed(
                        f"build timed out after {timeout:g}s and was killed",
                        reason="timeout", detail=log_tail(log_path), log_path=str(log_path),
                    )
                if status.code != 0:
                    raise BuildFailed(
                        f"builder failed with exit code {status.code}",
                        reason="exit-code", detail=log_tail(log_path),
                        exit_code=status.code, log_path=str(log_path),
                    )
                nodes, needles = self._collect(request, layout, log_path)
            finally:
                if not self.keep_bundles:
                    remove_tree(bundle_dir)
        return Build(
            request=request, outputs=nodes, outputs_needles=needles,
            exit_code=status.code, duration=status.duration, log_path=str(log_path),
        )

    def _collect(
        self, request: BuildRequest, layout: object, log_path: Path
    ) -> tuple[tuple[Node, ...], tuple[tuple[int, ...], ...]]:
        """Ingest every output and scan it for the request's needles."""
        needles = [n.encode() for n in request.refscan_needles]
        nodes: list[Node] = []
        found: list[tuple[int, ...]] = []
        for output in request.outputs:
            host = layout.output_host_path(output)  # type: ignore[attr-defined]
            if not os.path.lexists(host):
                raise BuildFailed(
                    f"build did not produce output {output!r}",
                    reason="missing-output", detail=log_tail(log_path), log_path=str(log_path),
                )
            nodes.append(ingest_path(self.store, host))
            found.append(tuple(sorted(scan_path(host, needles))) if needles else ())
        return tuple(nodes), tuple(found)


def default_store_dir() -> Path:
    """``$OCIBUILD_STORE`` or the per-user cache dir (``$XDG_CACHE_HOME/ocibuild/store``)."""
    env = os.environ.get("OCIBUILD_STORE")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ocibuild" / "store"


def open_executor(
    *,
    store: str | Path | None = None,
    runtime: str = "runc",
    inputs: str = "materialize",
    bundle_root: Path | None = None,
    keep_bundles: bool = False,
    timeout: float | None = None,
    max_parallel: int | None = None,
) -> Executor:
    """An Executor from plain settings (the CLI and the pytest plugin use this)."""
    store_dir = Path(store) if store is not None else default_store_dir()
    root = bundle_root or store_dir.parent / "bundles"
    return Executor(
        open_store(store_dir),
        inputs=open_input_provider(inputs),
        runtime=open_runtime(runtime, state_dir=root / "runc-state"),
        bundle_root=root,
        keep_bundles=keep_bundles,
        timeout=timeout,
        max_parallel=max_parallel,
    )
