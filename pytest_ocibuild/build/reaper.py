"""Run ``runc run --detach`` and wait for the container's init with its real exit status.

Executed as a script (``python -I -S reaper.py PIDFILE PERSONALITY RUNC ARGS...``; stdlib only,
so it starts fast). ``runc run`` without a terminal pumps the build's stdio through pipes of its
own; detached, runc hands the container our fds 0-2 as they are (stdin /dev/null, stdout and
stderr the log file), but then exits while the container runs. This process therefore makes
itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): when runc exits, the orphaned container
init is reparented here and ``waitpid`` gives its exit code or signal.

Exit status: runc's own when ``runc run --detach`` fails (the caller reads runc's log to tell
why); otherwise the container's code, 128+N if signal N killed it (as ``runc run`` reports).
``PERSONALITY`` (hex, 0: leave alone) is or-ed into this process's personality before runc runs;
runc 1.1.5 does not reset it, so the build inherits it (``ADDR_NO_RANDOMIZE``, as Nix sets).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def _status(st: int) -> int:
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 255


def main(argv: list[str]) -> int:
    pid_file, personality, cmd = argv[1], int(argv[2], 16), argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"ocibuild: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 125
    if personality:
        current = libc.personality(0xFFFFFFFF)
        if current != -1:
            libc.personality(current | personality)
    runc = os.spawnv(os.P_NOWAIT, cmd[0], cmd)  # inherits fds 0-2
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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
