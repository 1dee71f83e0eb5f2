"""Executor: request -> spec -> bundle -> inputs -> runc -> ingest outputs -> refscan -> Build.

With a ResultStore the executor is a cache in front of that pipeline: a finished build is
recorded under its request digest and a later request with the same digest returns the
recorded Build (``cached=True``) without running anything. Identical builds asked for at the
same time, by threads or processes sharing the store, run once: the first takes the key's lock,
the others wait on it and then find the record (single flight). Failures are recorded only
with ``cache_failures`` (exit-code and missing-output failures). A timeout is recorded only
when the caller says it expects one (``build(..., expect_timeout=True)``) and is a hit only for
such a call with a timeout no longer than the recorded one. Each build's log is kept in the
ResultStore whatever the outcome (``ocibuild log KEY``).

Each build runs in a slot (at most ``max_parallel`` at once, across processes sharing the
bundle root); as root, each slot has its own unused host uid/gid (build.ids), so concurrent
builds cannot touch each other's files or processes. Its limits (build.limits) are the
request's, then the executor's, then the defaults; a build stopped at one fails with that
limit's reason, and what it left is checked against its disk budget before any ingest.

Commit order: outputs are ingested (content-addressed, each object renamed into place), then
the log is saved, then the record is written, so a crash at any point leaves either no record
or a record whose objects are all present; ``purge`` removes the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_ocibuild.build import events, logs
from pytest_ocibuild.build.atomic import file_lock, remove_tree
from pytest_ocibuild.build.budget import check_budget
from pytest_ocibuild.build.bundle import BundleShell, make_bundle, plan_bundle
from pytest_ocibuild.build.caches import CacheStore
from pytest_ocibuild.build.collect import collect_outputs
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.inputs import InputProvider, open_input_provider
from pytest_ocibuild.build.limits import Limits, limit_failure
from pytest_ocibuild.build.locations import bundle_root as user_bundle_root
from pytest_ocibuild.build.locations import default_store_dir
from pytest_ocibuild.build.logs import log_tail
from pytest_ocibuild.build.request import Build, BuildRequest
from pytest_ocibuild.build.results import (
    CacheStats,
    Record,
    ResultStore,
    check_outputs_present,
    result_key,
)
from pytest_ocibuild.build.root_pool import SHARED_DIR, RootPool
from pytest_ocibuild.build.runtime import ChoosesIds, DefersDeletes, Runtime, open_runtime
from pytest_ocibuild.build.slots import Slots
from pytest_ocibuild.build.spec import host_network_files, make_spec
from pytest_ocibuild.castore.store import Store, open_store
from pytest_ocibuild.errors import BuildFailed, BundleError, RuntimeUnavailable

if TYPE_CHECKING:
    from pytest_ocibuild.build.lifecycle import PurgeReport

CONTAINER_PREFIX = "ocibuild-"  # containers and bundles: ocibuild-<pid>-<n>-<digest12>
CACHEABLE_FAILURES = ("exit-code", "missing-output")
_counter = itertools.count()


class Executor:
    """Runs BuildRequests in OCI containers over a castore; thread-safe.

    ``results``: the result cache (None: every build runs). ``cache``: look results up
    (False: always run, still record). ``caches``: persistent caches for ``request.caches``.
    ``stats`` counts hits, misses and the time hits saved.
    """

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
        results: ResultStore | None = None,
        caches: CacheStore | None = None,
        cache: bool = True,
        cache_failures: bool = False,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.inputs = inputs
        self.runtime = runtime
        self.bundle_root = Path(bundle_root)
        self.keep_bundles = keep_bundles
        self.timeout = timeout
        self.max_parallel = max_parallel or os.cpu_count() or 1
        self.results = results
        self.caches = caches
        self.cache = cache
        self.cache_failures = cache_failures
        self.stats = CacheStats()
        self.limits = limits or Limits()  # what a request leaves unset (then build.limits)
        if id_maps is None and isinstance(runtime, ChoosesIds):
            id_maps = runtime.id_maps()  # e.g. bwrap as a normal user: the caller's ids
        self._id_maps = id_maps
        self._id_maps_given = id_maps is not None
        self._per_slot: dict[int, IdMaps] = {}
        self._slots = Slots(self.bundle_root / "slots", self.max_parallel)
        self._roots = RootPool(self.bundle_root / SHARED_DIR)
        self._shells = RootPool(self.bundle_root / SHARED_DIR, "bundles")
        self._lock = threading.Lock()
        self._flights = events.Flights()  # builds running here, for joiners' logs

    @property
    def id_maps(self) -> IdMaps:
        """The uid/gid maps builds run with (detected lazily from this host)."""
        with self._lock:
            if self._id_maps is None:
                self._id_maps = IdMaps.detect()
            return self._id_maps

    def _slot_maps(self, slot: int) -> IdMaps:
        with self._lock:
            if slot not in self._per_slot:
                self._per_slot[slot] = IdMaps.detect(slot=slot, reach=self.bundle_root)
            return self._per_slot[slot]

    def limits_for(self, request: BuildRequest) -> Limits:
        """The limits a build of ``request`` runs under, every one set (see build.limits)."""
        return request.limits.over(self.limits).resolved(request.constraints.min_memory)

    def spec(
        self, request: BuildRequest, *, slot: int | None = None, cgroups: bool | None = None
    ) -> dict:
        """The OCI config.json a build of ``request`` uses (in build slot ``slot``: as root,
        each slot has its own host ids; None: the maps given or detected once). ``cgroups``:
        limits as cgroups (default: when root; see spec.make_spec)."""
        id_maps = self.id_maps if slot is None or self._id_maps_given else \
            self._slot_maps(slot)
        return make_spec(request, id_maps=id_maps, network_files=host_network_files(),
                         limits=self.limits_for(request),
                         cgroups=os.geteuid() == 0 if cgroups is None else cgroups)

    def purge(self) -> PurgeReport:
        """Remove what crashed runs left (their containers, mounts, bundles, staging, locks)."""
        from pytest_ocibuild.build.lifecycle import purge

        return purge(store_root=self.results.root if self.results else None,
                     bundle_root=self.bundle_root, runtime=self.runtime)

    def build(
        self,
        request: BuildRequest,
        *,
        timeout: float | None = None,
        log: Path | None = None,
        cache: bool | None = None,
        expect_timeout: bool = False,
        listener: events.Listener | None = None,
    ) -> Build:
        """Build ``request`` (or return its recorded Build); raise BuildFailed on failure.

        ``cache`` overrides the executor's setting for this call. ``log``: where the build's
        output goes (on a hit: a copy of the recorded log). ``expect_timeout``: the caller
        expects the build to time out, so with ``cache_failures`` a timeout is recorded (and
        found again) like a deterministic failure. RuntimeUnavailable if runc cannot run here.
        ``listener``: called with each build event (build.events), in this thread.
        """
        if listener is None:
            return self._build(request, timeout, log, cache, expect_timeout, None)
        return events.observed(listener, result_key(request), lambda: self._build(
            request, timeout, log, cache, expect_timeout, listener))

    def _build(
        self, request: BuildRequest, timeout: float | None, log: Path | None,
        cache: bool | None, expect_timeout: bool, listener: events.Listener | None,
    ) -> Build:
        """``build`` (its events but the first and the last to ``listener``)."""
        results = self.results
        timeout = timeout if timeout is not None else self.timeout
        if results is None:
            return self._run(request, timeout, log, listener=listener)
        use = self.cache if cache is None else cache
        key = result_key(request)
        start = time.monotonic()
        limit = timeout if expect_timeout else None
        if use and (hit := self._lookup(request, key, log, start, limit)) is not None:
            return hit
        if use and listener is not None:  # an identical build running here: its log
            self._flights.join(key, listener)
        with results.lock(key) if use else contextlib.nullcontext():
            if use and (hit := self._lookup(request, key, log, start, limit)) is not None:
                return hit  # an identical build finished while we waited
            self.stats.miss()
            from pytest_ocibuild.build.gc import gc_lock_path

            with file_lock(gc_lock_path(results.root), shared=True), \
                    self._flights.flying(key, listener) as listener:
                began = time.monotonic()
                try:
                    build = self._run(request, timeout, log, results=results,
                                      listener=listener)
                except BuildFailed as e:
                    if self.cache_failures and (e.reason in CACHEABLE_FAILURES or (
                            e.reason == "timeout" and limit is not None)):
                        results.put(Record(
                            key=key, ok=False, exit_code=e.exit_code or 0, reason=e.reason,
                            message=e.message, elapsed=time.monotonic() - began,
                            created=time.time(), timeout=limit or 0.0))
                    raise
                results.put(Record.of_build(build, elapsed=time.monotonic() - began))
        return build

    def _lookup(
        self, request: BuildRequest, key: str, log: Path | None, start: float,
        limit: float | None,
    ) -> Build | None:
        """The recorded outcome of ``key``: a Build, a raised BuildFailed, or None (miss).

        A recorded timeout counts only for a call expecting one with a ``limit`` it covers.
        """
        assert self.results is not None
        record = self.results.get(key, touch=True)
        if record is None or (not record.ok and not self.cache_failures):
            return None
        if record.reason == "timeout" and not record.covers(limit):
            return None
        if record.ok and not check_outputs_present(self.store, record):
            return None
        stored = self.results.log_path(key)
        log_path: str | None = str(stored) if stored.exists() else None
        if log is not None:
            if log_path is None:
                logs.create(log)
            else:
                logs.keep(stored, log, move=False)
            log_path = str(log)
        self.stats.hit(record.elapsed - (time.monotonic() - start))
        if not record.ok:
            raise BuildFailed(
                f"{record.message} (cached failure)", reason=record.reason,
                detail=log_tail(Path(log_path)) if log_path else "",
                exit_code=record.exit_code if record.reason == "exit-code" else None,
                log_path=log_path)
        try:
            return record.to_build(request, log_path=log_path)
        except ValueError:
            return None

    def _run(
        self,
        request: BuildRequest,
        timeout: float | None,
        log: Path | None,
        *,
        results: ResultStore | None = None,
        listener: events.Listener | None = None,
    ) -> Build:
        """Run the build for real; keep its log in ``results`` whatever the outcome."""
        reason = self.runtime.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        if request.caches and self.caches is None:
            raise BundleError("the request uses caches but this executor has no cache store")
        limits = self.limits_for(request)
        cid = f"{CONTAINER_PREFIX}{os.getpid()}-{next(_counter)}-{request.digest.hex[:12]}"
        bundle_dir = self.bundle_root / cid
        # The log is written once: into the result store's staging and then renamed into
        # place when nobody asked for it elsewhere, else where asked and linked into the store.
        own = log is None and results is not None
        if own:
            log_path = results.new_log()  # type: ignore[union-attr]
            shown = results.log_path(result_key(request))  # type: ignore[union-attr]
        else:
            log_path = shown = log or self.bundle_root / "logs" / f"{cid}.log"
            logs.create(log_path)
        with self._slots.acquire() as slot, contextlib.ExitStack() as stack:
            spec = self.spec(request, slot=slot)  # each slot builds as its own host ids
            plan = plan_bundle(request, spec)  # owners and mount points, derived once
            skeleton = plan.skeleton
            # runc deletes the container while we ingest the outputs and remove the bundle
            if isinstance(self.runtime, DefersDeletes):
                stack.enter_context(self.runtime.deferring_deletes())
            # a root of an earlier build (kept bundles get their own)
            rootfs = stack.enter_context(self._roots.use(skeleton)) \
                if skeleton.reusable and not self.keep_bundles else None
            # with a pooled root, the bundle's directories are reused too (no caches/ links)
            pooled = rootfs is not None and not request.caches
            if pooled:
                bundle_dir = stack.enter_context(self._shells.use(BundleShell.of(request)))
            clones = {c.name: stack.enter_context(self.caches.use(  # type: ignore[union-attr]
                c.name, owner=plan.owners.build)) for c in request.caches}
            try:
                layout = make_bundle(request, spec, bundle_dir,
                                     cache_dirs={n: c.path for n, c in clones.items()},
                                     shared_dir=self.bundle_root / SHARED_DIR, rootfs=rootfs,
                                     reuse=pooled, plan=plan)
                on_output = events.started(listener, bundle_dir, self.runtime, request)
                with self.inputs.provide(self.store, request.inputs, layout.inputs_dir):
                    events.phase(listener, "run")
                    status = self.runtime.run(bundle_dir, cid, log=log_path, timeout=timeout,
                                              max_silent=limits.max_silent_time, **on_output)
                if os.geteuid() != 0:  # what a rootless build wrote: the caller's again
                    from pytest_ocibuild.build.userns import give_back

                    give_back([*layout.scratch_dirs.values(), layout.root_dir / "tmp",
                               *(Path(c.path) for c in clones.values())])
                # over budget first: a file stopped at RLIMIT_FSIZE is why such a build failed
                failure = check_budget(layout, clones, limits) \
                    or limit_failure(status, timeout, limits) \
                    or ((f"builder failed with exit code {status.code}", "exit-code")
                        if status.code != 0 else None)
                if failure is not None:
                    raise BuildFailed(
                        failure[0], reason=failure[1], detail=log_tail(log_path),
                        exit_code=status.code if failure[1] == "exit-code" else None,
                        log_path=str(shown))
                events.phase(listener, "ingest")
                nodes, needles = collect_outputs(self.store, request, layout, log_path, shown,
                                                 listener)
            finally:
                if not self.keep_bundles and not pooled:
                    remove_tree(bundle_dir)
                if results is not None:
                    with contextlib.suppress(OSError):
                        results.save_log(result_key(request), log_path, move=own)
            for clone in clones.values():
                clone.commit()  # the build succeeded: keep its cache unless one moved on
        return Build(
            request=request, outputs=nodes, outputs_needles=needles,
            exit_code=status.code, duration=status.duration, log_path=str(shown),
        )


def open_executor(
    *,
    store: str | Path | None = None,
    runtime: str = "runc",
    inputs: str = "materialize",
    bundle_root: Path | None = None,
    keep_bundles: bool = False,
    timeout: float | None = None,
    max_parallel: int | None = None,
    cache: bool = True,
    cache_failures: bool = False,
    purge: bool = True,
    limits: Limits | None = None,
) -> Executor:
    """An Executor from plain settings (the CLI and the pytest plugin use this).

    ``limits``: what requests leave unset (then the defaults of build.limits).

    A directory store gets a ResultStore and a CacheStore beside it (``memory://`` gets
    neither). ``cache=False`` forces rebuilds (results are still recorded). ``purge`` first
    removes what crashed runs left in the store and under ``bundle_root`` (see lifecycle).
    """
    text = str(store) if store is not None else str(default_store_dir())
    on_disk = not text.startswith("memory://")
    store_dir = Path(text[len("local://"):] if text.startswith("local://") else text)
    root = bundle_root or user_bundle_root()  # per user: a later purge finds it
    executor = Executor(
        open_store(text),
        inputs=open_input_provider(inputs),
        runtime=open_runtime(runtime),  # state: locations.runtime_state_dir(name)
        bundle_root=root,
        keep_bundles=keep_bundles,
        timeout=timeout,
        max_parallel=max_parallel,
        results=ResultStore(store_dir) if on_disk else None,
        caches=CacheStore(store_dir) if on_disk else None,
        cache=cache,
        cache_failures=cache_failures,
        limits=limits,
    )
    if purge:
        executor.purge()
    return executor
