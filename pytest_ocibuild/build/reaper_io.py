"""Small stdlib-only helpers of ``reaper`` (loaded by it with ``_sibling``): statuses, writes,
kills, runc's log, and forwarding output chunks to a streaming client.

A job whose spec says ``"stream": true`` gets each chunk of its output on its channel as it is
read, one message per chunk: a byte naming the stream (1 stdout, 2 stderr), then the bytes
(docs/reaper.md). JSON answers start with ``{``, so the client tells them apart by the first
byte.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket

STREAM_READ = 65535  # a streaming job's read size: with its stream byte, one 64 KiB message
SEND_WAIT = 5.0  # seconds a chunk may wait for a client that is not reading, then no more


def status(st: int) -> int:
    """The exit code of a wait status: 128+N for signal N."""
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 255


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def kill(pid: int | None) -> None:
    """SIGKILL ``pid`` if there is one and it still exists."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def runc_log(fd: int, limit: int) -> str:
    """The last ``limit`` bytes of memory file ``fd`` (runc's log), which is closed."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, limit, max(0, size - limit))
    os.close(fd)
    return data.decode(errors="replace")


def forward(chan: socket.socket, stream: int, data: bytes) -> bool:
    """Send one chunk to the client; False if it cannot take it (gone, or not reading for
    ``SEND_WAIT`` seconds: the reaper serves other jobs, so the job stops streaming)."""
    message = bytes((stream,)) + data
    try:
        chan.send(message, socket.MSG_DONTWAIT)
        return True
    except BlockingIOError:
        pass
    except OSError:
        return False
    poller = select.poll()
    poller.register(chan, select.POLLOUT)
    if not poller.poll(int(SEND_WAIT * 1000)):
        return False
    try:
        chan.send(message, socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def spawn(spec: dict, devnull: int, out_w: int, err_w: int, runtime_log: int) -> int:
    """Start a job's ``argv``: stdin /dev/null (``"stdin_pipe"``: an empty pipe instead, for
    crun and runsc, which would chown the host's /dev/null to the build's uid as the
    container's stdio), stdout and stderr the pipes, fd 3 the runtime's log, and
    ``"files"`` opened read-only at their fds (e.g. a seccomp filter). OSError if it cannot."""
    stdin = devnull
    if spec.get("stdin_pipe"):
        stdin, in_w = os.pipe()
        os.close(in_w)  # reads give EOF at once, as from /dev/null
    try:
        return os.posix_spawn(spec["argv"][0], spec["argv"], spec["env"], file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2), (os.POSIX_SPAWN_DUP2, runtime_log, 3),
            *((os.POSIX_SPAWN_OPEN, int(fd), path, os.O_RDONLY, 0)
              for fd, path in spec.get("files", {}).items())])
    finally:
        if stdin != devnull:
            os.close(stdin)
