"""Cgroups of the reaper's containers: what limits they reached, and removing them.

Stdlib only: loaded by the reaper script beside it (see reaper). cgroup v1 (one directory per
controller, this host's hybrid layout) and v2 (the unified directory, key ``""`` in runc's
``cgroup_paths``) are both read.
"""

from __future__ import annotations

import errno
import os
import time


def limits_reached(state: dict) -> list[str]:
    """Which of ``memory`` (a process was OOM-killed) and ``pids`` (a fork was refused at
    the limit) the container in runc's ``state`` (its state.json) reached."""
    paths = state.get("cgroup_paths") or {}
    found = []
    for name, files in (("memory", (("memory", "memory.oom_control"), ("", "memory.events"))),
                        ("pids", (("pids", "pids.events"), ("", "pids.events")))):
        for key, file in files:
            counts = _counts(paths.get(key), file)
            if counts.get("oom_kill" if name == "memory" else "max", 0) > 0:
                found.append(name)
                break
    return found


def _counts(directory: str | None, file: str) -> dict[str, int]:
    """``key value`` lines of a cgroup file as a dict ({} if it cannot be read)."""
    if not directory:
        return {}
    try:
        with open(os.path.join(directory, file)) as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def remove_stopped(state_dir: str, state: dict) -> bool:
    """Delete a stopped container as ``runc delete`` would: its cgroups, then ``state_dir``.

    ``state``: its ``state.json``. False (leaving whatever is left to ``runc delete``) unless
    that names no hooks, no Intel RDT group and no systemd-managed cgroup, and every step
    works.
    """
    try:
        config = state["config"]
        if any((config.get("Hooks") or {}).values()) or state.get("intel_rdt_path") or \
                (config.get("cgroups") or {}).get("Systemd"):
            return False
        cgroups = set((state.get("cgroup_paths") or {}).values())
        for path in sorted(cgroups, key=len, reverse=True):  # children first
            _remove_cgroup(path)
        with os.scandir(state_dir) as it:
            names = [e.name for e in it]
        for name in names:  # state.json (and exec.fifo if runc left it)
            os.unlink(os.path.join(state_dir, name))
        os.rmdir(state_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _remove_cgroup(path: str) -> None:
    """rmdir a cgroup whose processes are gone (the kernel may need a moment to notice)."""
    if not path.startswith("/sys/fs/cgroup/"):
        raise ValueError(f"not a cgroup: {path}")
    for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
        time.sleep(delay)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
    os.rmdir(path)
