"""NixBuilder: build a derivation and its closure in the OCI sandbox, as ``nix-build`` would.

For each derivation of the closure, dependencies first (in parallel up to the executor's
limit, each once): reuse its recorded result, or resolve it (content-addressed inputs),
check that this machine can build it, bring its input sources into the castore, turn it into
a BuildRequest (``to_request``), run it, and register its outputs (``register``). Nothing is
written to ``/nix/store``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.bundle import scratch_name
from pytest_ocibuild.build.events import Listener
from pytest_ocibuild.build.executor import Executor, log_tail
from pytest_ocibuild.errors import BuildFailed, NixError, StoreError
from pytest_ocibuild.nix import nixbase32
from pytest_ocibuild.nix.ca import name_needles
from pytest_ocibuild.nix.closure import DrvGraph, PathInfo, SourceCache, closure
from pytest_ocibuild.nix.derivation import Derivation
from pytest_ocibuild.nix.drv_hash import derivation_path, derivation_type, hash_derivation_modulo
from pytest_ocibuild.nix.hashes import sha256
from pytest_ocibuild.nix.kept import drop_kept, kept_note
from pytest_ocibuild.nix.register import chroot_path, register_outputs
from pytest_ocibuild.nix.store_path import STORE_DIR, StorePath, make_output_path
from pytest_ocibuild.nix.to_request import (
    NixSettings,
    check_platform,
    derivation_to_request,
    rewrite_strings,
    scratch_paths,
)

Outputs = dict[str, PathInfo]
Listen = Callable[[str, int], Listener | None]  # NixBuilder's listen(drv_path, builds run)
_EXEC_FAILED = re.compile(r'unable to start container process: exec: "([^"]*)": (?:stat [^:]*: )?'
                          r"(.*)$", re.M)


def downstream_placeholder(drv_path: str, output: str) -> str:
    """Nix ``downstreamPlaceholder``: stands for an output of a not yet built CA input."""
    sp = StorePath.from_absolute(drv_path)
    name = sp.name.removesuffix(".drv")
    text = f"nix-upstream-output:{sp.hash_part}:{name if output == 'out' else f'{name}-{output}'}"
    return "/" + nixbase32.encode(sha256(text.encode()))


def needs_resolving(drv: Derivation, ca_derivations: bool = False) -> bool:
    """Deferred derivations and floating ones with input derivations are resolved first, and
    with ``ca-derivations`` enabled fixed-output ones too (Nix 2.8 ``inputsRealised``)."""
    kinds = ("deferred", "floating", "impure", *(("fixed",) if ca_derivations else ()))
    return bool(drv.input_drvs) and derivation_type(drv) in kinds


def resolve(drv: Derivation, built: Mapping[str, Outputs]) -> Derivation:
    """Nix ``Derivation::tryResolve``: input derivations replaced by their output paths."""
    rewrites: dict[bytes, bytes] = {}
    srcs = set(drv.input_srcs)
    for dep, outs in drv.input_drvs.items():
        for o in outs:
            path = built[dep][o].path
            rewrites[downstream_placeholder(dep, o).encode()] = path.encode()
            srcs.add(path)

    def rw(s: str) -> str:
        return rewrite_strings(s.encode(), rewrites).decode()

    env = {rw(k): rewrite_strings(v, rewrites) for k, v in drv.env.items()}
    resolved = Derivation(outputs=drv.outputs, input_drvs={}, input_srcs=tuple(srcs),
                          system=drv.system, builder=rw(drv.builder),
                          args=tuple(rw(a) for a in drv.args), env=env)
    deferred = [o for o, out in drv.outputs.items() if not out.path and not out.hash_algo]
    if deferred:
        hashes = hash_derivation_modulo(resolved, _no_inputs, mask_outputs=True).hashes
        outputs = dict(resolved.outputs)
        for o in deferred:
            path = make_output_path(o, hashes[o], resolved.name).absolute
            outputs[o] = outputs[o]._replace(path=path)
            env[o] = path.encode()
        resolved = Derivation(outputs=outputs, input_drvs={}, input_srcs=resolved.input_srcs,
                              system=resolved.system, builder=resolved.builder,
                              args=resolved.args, env=env)
    return resolved


def _no_inputs(drv_path: str) -> Derivation:
    raise NixError(f"resolved derivation has no inputs, yet {drv_path} was asked for")


class NixBuilder:
    """Builds derivations with an Executor; results are kept by derivation under ``state``."""

    def __init__(self, executor: Executor, state: Path, *, settings: NixSettings,
                 progress: Callable[[str], None] | None = None,
                 store_root: str | Path = "/", keep_going: bool = False,
                 keep_failed: bool = False, listen: Listen | None = None) -> None:
        """``listen(drv_path, n)``: the listener (build.events) of a derivation's build, one
        of ``n`` this ``build`` runs (None: not watched)."""
        from pytest_ocibuild.build.results import SANDBOX_VERSION
        from pytest_ocibuild.nix.results import DrvResults

        self.executor = executor
        self.settings = settings
        self.sources = SourceCache(executor.store, Path(state) / "srcs", store_root=store_root)
        # the host's Nix store: fixed outputs valid there are not built (read-only queries)
        self.host = self.sources if str(store_root) == "/" else SourceCache(
            executor.store, Path(state) / "srcs", store_root="/")
        self.results = DrvResults(executor.store, Path(state) / f"drvs-v{SANDBOX_VERSION}")
        self.progress = progress
        self.store_root = store_root
        self.keep_going = keep_going  # -k: build what does not depend on a failure
        self.keep_failed = keep_failed  # -K: the executor keeps bundles; we drop good ones
        self.listen = listen
        self._todo = 1  # derivations the current ``build`` runs
        self._lock = threading.Lock()
        self._path_locks: dict[str, threading.Lock] = {}

    def build(self, drv_path: str) -> Outputs:
        """Build ``drv_path`` and everything it needs; its outputs by name.

        A derivation with recorded outputs is not even read again (nor is its closure).
        """
        recorded = self.results.get(drv_path)
        if recorded is not None:
            return recorded
        graph = DrvGraph(drv_path, self.store_root)
        built: dict[str, Outputs] = {}
        for p in graph.order:
            recorded = self.results.get(p)
            if recorded is not None:
                built[p] = recorded
        todo = [p for p in graph.order if p not in built]
        waiting = {p: {d for d in graph.drvs[p].input_drvs if d not in built} for p in todo}
        dependents = graph.dependents()
        left = self._todo = len(todo)
        with ThreadPoolExecutor(max_workers=max(1, self.executor.max_parallel),
                                thread_name_prefix="nix-build") as pool:
            running: dict[Future[Outputs], str] = {}
            failed: list[BaseException] = []
            ready = [p for p in todo if not waiting[p]]
            try:
                while ready or running:
                    for p in ready:
                        self._say(f"building '{p}' ({left} left)")
                        running[pool.submit(self.build_one, p, graph.drvs[p], built)] = p
                    ready = []
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=lambda f: running[f]):
                        p = running.pop(fut)
                        left -= 1
                        if fut.exception() is not None and self.keep_going:
                            failed.append(fut.exception())  # type: ignore[arg-type]
                            print_progress(f"error: {fut.exception()}")
                            continue
                        built[p] = fut.result()
                        for q in sorted(dependents[p]):
                            if q in waiting and p in waiting[q]:
                                waiting[q].discard(p)
                                if not waiting[q]:
                                    ready.append(q)
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
        if failed:
            raise failed[0]
        return built[drv_path]

    def dry_run(self, drv_path: str) -> str:
        """What ``--dry-run`` says: the derivations that would be built (Nix's wording)."""
        graph = DrvGraph(drv_path, self.store_root)
        todo = sorted(p for p in graph.order if self.results.get(p) is None)
        if not todo:
            return "nothing to build"
        head = ("this derivation will be built:" if len(todo) == 1
                else f"these {len(todo)} derivations will be built:")
        return "\n".join([head, *(f"  {p}" for p in todo)])

    def check(self, drv_path: str) -> Outputs:
        """``--check``: build ``drv_path`` again (its dependencies are not) and compare."""
        recorded = self.results.get(drv_path)
        if recorded is None:
            raise NixError(f"some outputs of '{drv_path}' are not valid, so checking is not "
                           "possible")
        graph = DrvGraph(drv_path, self.store_root)
        built = {p: self.build(p) for p in graph.drvs[drv_path].input_drvs}
        drv = graph.drvs[drv_path]
        if needs_resolving(drv, "ca-derivations" in self.settings.features):
            drv = resolve(drv, built)
            drv_path_run = derivation_path(drv).absolute
        else:
            drv_path_run = drv_path
        again = self._run(drv_path_run, drv, built, cache=False)
        for o, info in sorted(recorded.items()):
            if again[o].nar_hash != info.nar_hash or again[o].path != info.path:
                raise BuildFailed(f"derivation '{drv_path}' may not be deterministic: output "
                                  f"'{info.path}' differs", reason="not-deterministic")
        return recorded

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def build_one(self, drv_path: str, drv: Derivation, built: Mapping[str, Outputs]) -> Outputs:
        """Build one derivation whose input derivations are in ``built``."""
        cached = self.results.get(drv_path)
        if cached is not None:
            return cached
        if needs_resolving(drv, "ca-derivations" in self.settings.features):
            resolved = resolve(drv, built)
            rpath = derivation_path(resolved).absolute
            outputs = self.results.get(rpath) or self._valid_or_run(rpath, resolved, built)
            self.results.put(rpath, outputs)
        else:
            outputs = self._valid_or_run(drv_path, drv, built)
        self.results.put(drv_path, outputs)
        return outputs

    def _valid_or_run(self, drv_path: str, drv: Derivation,
                      built: Mapping[str, Outputs]) -> Outputs:
        """The outputs, if all their (known) paths are valid already; else build. While one
        derivation builds a path, another asking for it waits (Nix's path locks)."""
        paths = sorted(out.path for out in drv.outputs.values() if out.path)
        with contextlib.ExitStack() as stack:
            for p in paths:
                with self._lock:
                    lock = self._path_locks.setdefault(p, threading.Lock())
                stack.enter_context(lock)
            if len(paths) == len(drv.outputs):
                valid = {o: self.results.valid_path(out.path)
                         for o, out in drv.outputs.items()}
                if all(valid.values()):
                    return valid  # type: ignore[return-value]
                if derivation_type(drv) == "fixed":
                    try:
                        host = self.host.get(paths)
                    except NixError:
                        host = {}
                    if paths[0] in host:
                        return {"out": host[paths[0]]}
            outputs = self._run(drv_path, drv, built)
            self.results.put(drv_path, outputs)  # valid from now on, for the waiting ones
            return outputs

    def _closure(self, roots: list[str], infos: dict[str, PathInfo]) -> set[str]:
        """The closure of ``roots``; what outputs refer to that is neither built nor an input
        source here (a dependency's ``builtins.toFile`` source, a ``.drv``) is looked up in
        the stores Nix keeps them in, as Nix finds every valid path."""
        while True:
            todo, done, missing = list(roots), set(), set()
            while todo:
                p = todo.pop()
                if p in done:
                    continue
                done.add(p)
                if p in infos:
                    todo.extend(infos[p].references)
                else:
                    missing.add(p)
            if not missing:
                return done
            try:
                infos.update(self.sources.get(sorted(missing)))
            except NixError:
                if self.host is self.sources:
                    raise
                infos.update(self.host.get(sorted(missing)))  # a .drv target's own store
            if not missing & infos.keys():
                return closure(roots, infos)  # Nix's "is not valid" for the first missing

    def _run(self, drv_path: str, drv: Derivation, built: Mapping[str, Outputs], *,
             cache: bool | None = None) -> Outputs:
        check_platform(drv, drv_path, self.settings)
        ours: dict[str, PathInfo] = {}
        for dep_outputs in built.values():
            for info in dep_outputs.values():
                ours[info.path] = info
        roots = [built[d][o].path for d, outs in drv.input_drvs.items() for o in outs]
        srcs = [p for p in drv.input_srcs if p not in ours]
        infos = {**self.sources.get(srcs), **ours}
        for p in [p for p in drv.input_srcs if p in ours]:
            roots.append(p)
        inputs = {p: infos[p] for p in self._closure([*roots, *drv.input_srcs], infos)}
        scratch = scratch_paths(drv, drv_path)
        request = derivation_to_request(
            drv, drv_path, inputs, settings=self.settings, scratch=scratch,
            drv_outputs={d: [i.path for i in outs.values()] for d, outs in built.items()})
        try:
            build = self.executor.build(request, cache=cache, listener=None if self.listen is
                                        None else self.listen(drv_path, self._todo))
        except BuildFailed as e:
            failure = _nix_failure(e, drv_path, scratch)
            if self.keep_failed:
                failure.detail = "\n".join(filter(None, [failure.detail, kept_note(
                    self.executor, request.digest.hex, drv_path)]))
            raise failure from None
        except StoreError as e:
            raise _nix_store_failure(e, drv_path) from None
        if self.keep_failed:
            drop_kept(self.executor, request.digest.hex)
        nodes, found = {}, {}
        for o, p in scratch.items():
            rel = p.lstrip("/")
            nodes[o] = build.output(rel)
            found[o] = set(build.references(rel)) | name_needles(
                self.executor.store, nodes[o], request.refscan_needles)
        try:
            return register_outputs(self.executor.store, drv, drv_path, scratch, nodes, found,
                                    inputs)
        except BuildFailed as e:
            if not e.detail and build.log_path:
                e.detail = log_tail(Path(build.log_path))
            raise


def _nix_failure(e: BuildFailed, drv_path: str, scratch: Mapping[str, str]) -> BuildFailed:
    if e.reason == "exit-code":
        code = e.exit_code
        m = _EXEC_FAILED.search(e.detail or "")
        if code == 127 and m:  # runc could not exec the builder; Nix's child exits with 1
            code = 1
            e.detail = f"{e.detail}\nexecuting '{m.group(1)}': {m.group(2).capitalize()}"
        msg = f"builder for '{drv_path}' failed with exit code {code}"
    elif e.reason == "missing-output":
        m = re.search(r"output '([^']+)'", e.message)
        path = "/" + m.group(1) if m else ""
        name = next((o for o, p in sorted(scratch.items()) if p == path), "out")
        msg = (f"builder for '{drv_path}' failed to produce output path for output '{name}' "
               f"at '{chroot_path(drv_path, scratch.get(name, path))}'")
    elif e.reason == "timeout" and (m := re.search(r"after ([0-9.]+)s", e.message)):
        # Nix's worker.cc: "%1% timed out after %2% seconds" with the goal's name
        msg = (f"building of '{drv_path}!{','.join(sorted(scratch))}' from .drv file timed "
               f"out after {float(m.group(1)):g} seconds")
    elif e.reason == "silent-timeout" and (m := re.search(r"for ([0-9.]+)s", e.message)):
        msg = (f"building of '{drv_path}!{','.join(sorted(scratch))}' from .drv file timed "
               f"out after {float(m.group(1)):g} seconds of silence")
    elif e.reason == "output-rejected" and e.path:  # a fifo, socket or device node
        return BuildFailed(f"file '{chroot_path(drv_path, '/' + e.path)}' has an unsupported "
                           "type", reason="output-invalid", detail=e.detail,
                           log_path=e.log_path)
    elif e.reason == "suspicious-output":  # a group/world-writable output root
        m = re.search(r"output '([^']+)'", e.message)
        path = "/" + m.group(1) if m else ""
        name = next((o for o, p in sorted(scratch.items()) if p == path), "out")
        msg = (f"suspicious ownership or permission on "
               f"'{chroot_path(drv_path, scratch.get(name, path))}' for output '{name}'; "
               "rejecting this build output")
    else:
        msg = f"builder for '{drv_path}': {e.message}"
    return BuildFailed(msg, reason=e.reason, detail=e.detail, exit_code=e.exit_code,
                       log_path=e.log_path)


def _nix_store_failure(e: StoreError, drv_path: str) -> BuildFailed:
    if e.reason == "unsupported-file-type":
        host = e.message.split(": is ", 1)[0]
        marker = f"/scratch/{scratch_name(STORE_DIR.lstrip('/'))}"
        fd = re.match(r"/proc/self/fd/\d+(/.*)$", host)  # read beneath the store scratch
        rest = host.split(marker, 1)[1] if marker in host else fd.group(1) if fd else host
        return BuildFailed(f"file '{chroot_path(drv_path, STORE_DIR + rest)}' has an "
                           "unsupported type", reason="output-invalid")
    return BuildFailed(f"builder for '{drv_path}': {e.message}", reason=e.reason)


def result_json(drv_path: str, outputs: Outputs) -> dict[str, Any]:
    """The ``--json`` document of ``ocibuild nix-build``."""
    return {"drvPath": drv_path, "outputs": {
        o: {"path": i.path, "narHash": i.nar_hash.sri, "narSize": i.nar_size,
            "references": list(i.references)} for o, i in sorted(outputs.items())}}


def print_progress(text: str) -> None:
    """Progress lines on stderr."""
    print(text, file=sys.stderr, flush=True)
