"""Typed build events: what ``Executor.build(..., listener=...)`` reports as a build goes.

A build emits ``Queued``, then (unless it is a cache hit) ``Started``, ``Phase`` for each step
(inputs, run, ingest, refscan) and ``Log`` for every chunk of output as the build writes it,
then ``Finished`` or ``Failed``. A hit emits ``Queued`` and ``Finished(cached=True)`` (or
``Failed`` for a recorded failure). ``to_json()`` gives one JSON-lines object per event,
checked by ``SCHEMA`` (docs/events.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

from pytest_ocibuild.build.runtime.base import OnOutput
from pytest_ocibuild.errors import BUILD_FAILURE_REASONS, BuildFailed, OcibuildError

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_ocibuild.build.request import Build, BuildRequest
    from pytest_ocibuild.build.runtime.base import Runtime

PHASES = ("inputs", "run", "ingest", "refscan")
# Failed.reason: a build failure's reason, or why the build could not run at all
FAILURE_REASONS = (*BUILD_FAILURE_REASONS, "runtime-unavailable", "bundle", "error")


@dataclass(frozen=True, slots=True)
class Queued:
    """The build was asked for (``key``: its result key, "" without a result store)."""

    key: str = ""
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Started:
    """Its container is about to run: the bundle dir, the runtime's name, the input names."""

    bundle: str
    runtime: str
    inputs: tuple[str, ...] = ()
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Log:
    """A chunk of the build's output, as read (``time``: monotonic, when it arrived)."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Phase:
    """A step begins: ``inputs`` (serving them), ``run``, ``ingest`` (outputs), ``refscan``."""

    name: str
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Finished:
    """The build succeeded: its output digests (hex), how long it ran, whether it was a hit."""

    outputs: tuple[str, ...]
    duration: float
    cached: bool = False
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Failed:
    """The build failed: ``reason`` (FAILURE_REASONS), the message, exit code or signal."""

    reason: str
    message: str
    exit_code: int | None = None
    signal: int | None = None
    time: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, error: OcibuildError) -> Failed:
        """The event of a raised error (an exit code 128+N of ``exit-code`` is signal N)."""
        code = error.exit_code if isinstance(error, BuildFailed) else None
        signal = code - 128 if code is not None and 128 < code < 160 else None
        reason = error.reason if error.reason in FAILURE_REASONS else "error"
        return cls(reason=reason, message=error.message, exit_code=code, signal=signal)


Event = Queued | Started | Log | Phase | Finished | Failed
Listener = Callable[[Event], None]


def to_json(event: Event) -> dict[str, Any]:
    """The JSON-lines object of ``event`` (``SCHEMA``): ``{"event": kind, ...fields}``.

    ``Log.data`` is given as ``text`` (UTF-8, bad bytes replaced) and as ``data`` (base64).
    """
    out: dict[str, Any] = {"event": type(event).__name__.lower()}
    for name in event.__slots__:  # type: ignore[union-attr]
        value = getattr(event, name)
        if isinstance(value, bytes):
            out["text"] = value.decode(errors="replace")
            value = base64.b64encode(value).decode()
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def outputs_of(build: Build) -> tuple[str, ...]:
    """The outputs of ``build`` for ``Finished``: each node's digest (a symlink: its target)."""
    from pytest_ocibuild.build.request import node_to_dict

    return tuple(str((d := node_to_dict(n)).get("digest") or d.get("target", ""))
                 for n in build.outputs)


def observed(listener: Listener | None, key: str, call: Callable[[], Build]) -> Build:
    """``call()`` (a build), reporting ``Queued`` first and ``Finished``/``Failed`` last."""
    if listener is None:
        return call()
    listener(Queued(key=key))
    try:
        build = call()
    except OcibuildError as e:
        listener(Failed.of(e))
        raise
    listener(Finished(outputs=outputs_of(build), duration=build.duration,
                      cached=build.cached))
    return build


def phase(listener: Listener | None, name: str) -> None:
    """Report that step ``name`` (PHASES) begins."""
    if listener is not None:
        listener(Phase(name))


def started(listener: Listener | None, bundle: Path, runtime: Runtime,
            request: BuildRequest) -> dict[str, OnOutput]:
    """Report ``Started`` and ``Phase("inputs")``; the keyword giving ``Runtime.run`` an
    ``on_output`` that reports each chunk as a ``Log`` (none without a listener: an
    unobserved build streams nothing)."""
    if listener is None:
        return {}
    listener(Started(bundle=str(bundle), runtime=runtime.name,
                     inputs=tuple(sorted(request.inputs))))
    listener(Phase("inputs"))
    return {"on_output": lambda stream, data: listener(Log(stream, data))}


class Live:
    """The CLI's view of builds: events as JSON lines on ``events`` (text) and the builds'
    output on ``logs`` (binary) as it comes; thread-safe, one ``listener`` per build.

    A build's ``label`` is its JSON objects' ``"build"`` and, with ``prefix``, the start of
    each of its log lines (``label> ``, as nix prints many builds' logs at once).
    """

    def __init__(self, *, events: IO[str] | None = None, logs: IO[bytes] | None = None,
                 prefix: bool = False) -> None:
        self.events, self.logs, self.prefix = events, logs, prefix
        self._lock = threading.Lock()
        self._partial: dict[str, bytes] = {}  # label -> a line not ended yet

    def listener(self, label: str = "") -> Listener | None:
        """The listener of one build (None: nothing to show)."""
        if self.events is None and self.logs is None:
            return None
        return lambda event: self._on(label, event)

    def _on(self, label: str, event: Event) -> None:
        with self._lock:
            if self.events is not None:
                out = to_json(event)
                if label:
                    out["build"] = label
                self.events.write(json.dumps(out) + "\n")
                self.events.flush()
            if self.logs is None:
                return
            if isinstance(event, Log):
                self._log(label, event.data)
            elif isinstance(event, Finished | Failed) and self._partial.get(label):
                self._log(label, b"\n")
                self._partial.pop(label, None)

    def _log(self, label: str, data: bytes) -> None:
        assert self.logs is not None
        if self.prefix and label:
            head = f"{label}> ".encode()
            lines = (self._partial.pop(label, b"") + data).split(b"\n")
            if lines[-1]:
                self._partial[label] = lines[-1]
            data = b"".join(head + line + b"\n" for line in lines[:-1])
        self.logs.write(data)
        self.logs.flush()


REPLAY_MAX = 4 << 20  # bytes of a running build's output kept for joiners (the last ones)


class Flights:
    """The builds running in this process, by result key, so that a build waiting on an
    identical one (the executor's single flight) sees its log: what it printed so far, then
    live, until it ends (OBuilder's replay; its last ``REPLAY_MAX`` bytes at most).

    A joiner's listener is called in the running build's thread, in order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Flight] = {}

    @contextlib.contextmanager
    def flying(self, key: str, listener: Listener | None) -> Iterator[Listener | None]:
        """While the build of ``key`` runs: the listener to give it (``listener`` and every
        joiner; None without a listener: nothing is streamed then)."""
        if listener is None:
            yield None
            return
        flight = _Flight(listener)
        with self._lock:
            self._running[key] = flight
        try:
            yield flight.on
        finally:
            with self._lock:
                if self._running.get(key) is flight:
                    del self._running[key]
            flight.close()

    def join(self, key: str, listener: Listener) -> bool:
        """Give ``listener`` the ``Log`` events of the running build of ``key`` if there is
        one (those so far at once); whether there was."""
        with self._lock:
            flight = self._running.get(key)
        return flight is not None and flight.subscribe(listener)


class _Flight:
    """One running build's listener and joiners, and its recent output."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self._lock = threading.Lock()
        self._logs: list[Log] = []
        self._size = 0
        self._joiners: list[Listener] | None = []  # None: over

    def on(self, event: Event) -> None:
        self.listener(event)
        if isinstance(event, Log):
            with self._lock:
                self._logs.append(event)
                self._size += len(event.data)
                while self._size > REPLAY_MAX and len(self._logs) > 1:
                    self._size -= len(self._logs.pop(0).data)
                for joiner in self._joiners or ():
                    joiner(event)

    def subscribe(self, listener: Listener) -> bool:
        with self._lock:
            if self._joiners is None:
                return False
            for event in self._logs:
                listener(event)
            self._joiners.append(listener)
            return True

    def close(self) -> None:
        with self._lock:
            self._joiners = None
            self._logs.clear()


_TIME = {"type": "number"}
# "build": which build (nix-build: the derivation's name), given by Live for many builds
_COMMON = {"event": {"type": "string"}, "time": _TIME, "build": {"type": "string"}}


def _kind(name: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "properties": {**_COMMON, "event": {"const": name}, **props},
            "required": ["event", "time", *required]}


_STRINGS = {"type": "array", "items": {"type": "string"}}
_OPT_INT = {"type": ["integer", "null"]}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ocibuild build event (one JSON object per line)",
    "oneOf": [
        _kind("queued", {"key": {"type": "string"}}, ["key"]),
        _kind("started", {"bundle": {"type": "string"}, "runtime": {"type": "string"},
                          "inputs": _STRINGS}, ["bundle", "runtime", "inputs"]),
        _kind("log", {"stream": {"enum": ["stdout", "stderr"]}, "text": {"type": "string"},
                      "data": {"type": "string", "contentEncoding": "base64"}},
              ["stream", "text", "data"]),
        _kind("phase", {"name": {"enum": list(PHASES)}}, ["name"]),
        _kind("finished", {"outputs": _STRINGS, "duration": {"type": "number"},
                           "cached": {"type": "boolean"}}, ["outputs", "duration", "cached"]),
        _kind("failed", {"reason": {"enum": list(FAILURE_REASONS)},
                         "message": {"type": "string"}, "exit_code": _OPT_INT,
                         "signal": _OPT_INT}, ["reason", "message", "exit_code", "signal"]),
    ],
}
