"""The client side of ``reaper``: one helper process per client process, shared by threads.

``shared_reaper(personality)`` starts the helper on first use (and again after a fork or if it
died) and ``Reaper.submit`` hands it a job. Each job has a socket of its own, so any number of
threads may wait on their builds at once. The helper watches this process: when it exits
(``bye``, sent at exit) the helper kills what is still running and exits; when it dies, by any
signal, the helper also kills and deletes its containers and removes its mounts and bundle
directories (in the default bundle root, in roots given to ``watch`` and in the root of each
job's bundle), then exits. See reaper.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import json
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REAPER = str(Path(__file__).with_name("reaper.py"))  # run as a script: see reaper.py
SHUTDOWN_WAIT = 5.0  # seconds to wait at exit for the helper to finish (it has no job then)
STREAMS = {1: "stdout", 2: "stderr"}  # the first byte of a forwarded chunk (reaper_io)
OnOutput = Callable[[str, bytes], None]


class ReaperGone(Exception):
    """The helper process died or could not be started."""


class Job:
    """A submitted job: ``wait_exit``, then ``wait_deleted``; ``kill`` it; ``close`` to abandon it.

    Each ``wait_*`` raises TimeoutError after ``timeout`` seconds (the job goes on; wait
    again) and ReaperGone if the helper died. ``on_output(stream, chunk)``: a streaming job's
    output chunks (submitted with ``"stream": true``), called as they come while waiting.
    """

    def __init__(self, chan: socket.socket, on_output: OnOutput | None = None) -> None:
        self._chan = chan
        self._on_output = on_output

    def wait_exit(self, timeout: float | None) -> tuple[int, str, tuple[str, ...]]:
        """The container's exit code (see reaper), once its output is complete, what runc
        logged, and the cgroup limits it reached (``memory``, ``pids``)."""
        answer = self._receive("code", timeout)
        return (int(answer["code"]), str(answer.get("runc_log", "")),
                tuple(str(x) for x in answer.get("limits", ())))

    def wait_deleted(self, timeout: float | None) -> bool:
        """Whether ``runc delete`` succeeded; the job is over (and closed) then."""
        try:
            return bool(self._receive("deleted", timeout)["deleted"])
        finally:
            self.close()

    def _receive(self, key: str, timeout: float | None) -> dict:
        if self._chan.fileno() < 0:
            raise ReaperGone("the job was abandoned")
        poller = select.poll()  # not select(): fds may be above FD_SETSIZE
        poller.register(self._chan, select.POLLIN)
        deadline = None if timeout is None or self._on_output is None else \
            time.monotonic() + timeout
        while True:
            if not poller.poll(None if timeout is None else math.ceil(timeout * 1000)):
                raise TimeoutError
            try:
                data = self._chan.recv(65536 if self._on_output is not None else 4096)
            except OSError as e:
                raise ReaperGone(f"the reaper process failed: {e}") from None
            if not data:
                raise ReaperGone("the reaper process died")
            if data[0] not in STREAMS:
                break
            if self._on_output is not None:  # an output chunk (reaper_io.forward)
                self._on_output(STREAMS[data[0]], data[1:])
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        answer = json.loads(data)
        if not isinstance(answer, dict) or key not in answer:
            raise ReaperGone(f"the reaper answered {answer!r}, not {key!r}")
        return answer

    def kill(self) -> None:
        """Ask the helper to SIGKILL runc and the container's init."""
        with contextlib.suppress(OSError):
            self._chan.send(b"kill")

    def close(self) -> None:
        """Stop listening: the helper still reaps and deletes the job (``kill`` it first)."""
        self._chan.close()


class Reaper:
    """A running helper process and its control socket."""

    def __init__(self, personality: int) -> None:
        self.personality = personality
        self.pid = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", REAPER, str(theirs.fileno()), f"{personality:x}",
                 str(self.pid), *_default_roots()],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            ours.close()
            raise ReaperGone(f"cannot start the reaper process: {e}") from None
        finally:
            theirs.close()
        self.control = ours
        self._send_lock = threading.Lock()

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.proc.poll() is None

    def submit(self, job: dict, fds: list[int], on_output: OnOutput | None = None) -> Job:
        """Send ``job`` (see reaper) with the log, stdout and stderr fds; returns its Job.
        ``on_output``: the Job's callback for the chunks of a ``"stream": true`` job.

        ``job["bundle"]`` (the bundle dir, cleaned up if this process dies) defaults to
        runc's ``--bundle`` argument."""
        if "bundle" not in job:
            job = {**job, "bundle": _bundle_arg(job.get("argv", []))}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._send_lock:
                self.control.sendmsg([json.dumps(job).encode()], [(
                    socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", [theirs.fileno(), *fds]).tobytes())])
        except OSError as e:
            ours.close()
            raise ReaperGone(f"the reaper process is gone: {e}") from None
        finally:
            theirs.close()
        return Job(ours, on_output)

    def watch(self, root: Path) -> None:
        """Have the helper clean up in bundle root ``root`` too, should this process die."""
        with self._send_lock, contextlib.suppress(OSError):
            self.control.send(json.dumps({"watch": os.path.abspath(root)}).encode())

    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> None:
        """Say bye and close the control socket; wait up to ``wait`` seconds for the helper to
        exit (it kills and deletes any job left first)."""
        if self.pid == os.getpid():
            with self._send_lock, contextlib.suppress(OSError):
                self.control.send(b'{"bye": true}')
        self.control.close()
        if self.pid == os.getpid():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)


_lock = threading.Lock()
_reapers: dict[int, Reaper] = {}


def _default_roots() -> list[str]:
    """The per-user bundle root (see locations), if it can be used."""
    from pytest_ocibuild.build.locations import bundle_root
    from pytest_ocibuild.errors import OcibuildError

    try:
        return [str(bundle_root())]
    except OcibuildError:
        return []


def _bundle_arg(argv: list[str]) -> str | None:
    """The value of ``--bundle`` in a runc command line."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--bundle":
            return str(argv[i + 1])
    return None


def shared_reaper(personality: int) -> Reaper:
    """This process's helper for ``personality``, started if needed."""
    with _lock:
        reaper = _reapers.get(personality)
        if reaper is None or not reaper.alive():
            if reaper is not None and reaper.pid == os.getpid():
                reaper.shutdown(wait=0)
            reaper = _reapers[personality] = Reaper(personality)
        return reaper


def _forget_after_fork() -> None:
    """In a forked child: drop (and close) the parent's control sockets."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    for reaper in _reapers.values():
        reaper.control.close()
    _reapers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _shutdown_all() -> None:
    with _lock:
        for reaper in _reapers.values():
            if reaper.pid == os.getpid():
                reaper.shutdown()
        _reapers.clear()
