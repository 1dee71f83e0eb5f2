"""Run ``runc run --detach`` and wait for the container's init with its real exit status.

Executed as a script (``python -I -S reaper.py PIDFILE PERSONALITY STREAMS RUNC ARGS...``;
stdlib only, so it starts fast). ``runc run`` without a terminal pumps the build's stdio through
pipes of its own; detached, runc hands the container the fds 0-2 we give it as they are, but
then exits while the container runs. This process therefore makes itself a child subreaper
(``PR_SET_CHILD_SUBREAPER``): when runc exits, the orphaned container init is reparented here
and ``waitpid`` gives its exit code or signal.

Output: the build's stdin is our fd 0 (/dev/null). With ``STREAMS`` empty its stdout and stderr
are our fds 1 and 2 (the log file) themselves. With ``STREAMS`` a path prefix, the build gets
one pipe for stdout and one for stderr; this process copies every chunk, as it reads it, both
to our fd 1 (the combined log, in the order the chunks were read) and to ``STREAMS.stdout`` /
``STREAMS.stderr`` (appended to). It drains both pipes until EOF, which comes when every
holder of their write ends is gone: the container's processes (all killed with its init, also
on timeout) and runc (whose own errors thus land in the log too). Nothing is lost on a kill
of the container; only a SIGKILL of this process (a last resort of the caller) can drop what
is still in the pipes. Chunks written to the two streams within the same instant may appear
in the combined log in either order.

Exit status: runc's own when ``runc run --detach`` fails (the caller reads runc's log to tell
why); otherwise the container's code, 128+N if signal N killed it (as ``runc run`` reports).
``PERSONALITY`` (hex, 0: leave alone) is or-ed into this process's personality before runc runs;
runc 1.1.5 does not reset it, so the build inherits it (``ADDR_NO_RANDOMIZE``, as Nix sets).
"""

from __future__ import annotations

import ctypes
import os
import select
import sys

PR_SET_CHILD_SUBREAPER = 36


def _status(st: int) -> int:
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 255


def main(argv: list[str]) -> int:
    pid_file, personality, streams, cmd = argv[1], int(argv[2], 16), argv[3], argv[4:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"ocibuild: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 125
    if personality:
        current = libc.personality(0xFFFFFFFF)
        if current != -1:
            libc.personality(current | personality)
    # Without STREAMS the build inherits fds 0-2 as they are.
    runc = _spawn_and_copy(cmd, streams) if streams else os.spawnv(os.P_NOWAIT, cmd[0], cmd)
    reaped: dict[int, int] = {}
    while runc not in reaped:
        pid, st = os.waitpid(-1, 0)
        reaped[pid] = st
    code = _status(reaped.pop(runc))
    if code != 0:
        return code
    try:
        with open(pid_file) as f:
            init = int(f.read().strip())
    except (OSError, ValueError) as e:
        print(f"ocibuild: runc wrote no container pid: {e}", file=sys.stderr)
        return 125
    while init not in reaped:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen unless someone else reaped it
            return 255
        reaped[pid] = st
    return _status(reaped[init])


def _spawn_and_copy(cmd: list[str], prefix: str) -> int:
    """Start runc with a pipe each for fds 1 and 2; copy both to the log and their files.

    Returns runc's pid once both pipes are at EOF (the container and runc are gone).
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sinks = {}
    for r, name in ((out_r, "stdout"), (err_r, "stderr")):
        sinks[r] = os.open(f"{prefix}.{name}", os.O_WRONLY | os.O_CREAT | os.O_APPEND
                           | os.O_CLOEXEC, 0o644)
    runc = os.posix_spawn(cmd[0], cmd, os.environ, file_actions=[
        (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
    os.close(out_w)
    os.close(err_w)
    pending = [out_r, err_r]
    while pending:
        try:
            ready, _, _ = select.select(pending, [], [])
        except InterruptedError:
            continue
        for r in ready:
            data = os.read(r, 65536)
            if not data:
                pending.remove(r)
                os.close(r)
                continue
            _write_all(1, data)
            _write_all(sinks[r], data)
    for fd in sinks.values():
        os.close(fd)
    return runc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
