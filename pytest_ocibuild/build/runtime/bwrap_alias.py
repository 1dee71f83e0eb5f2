"""Bundles bwrap's user cannot reach: their directories bound below ``ALIAS``, for it alone.

As root, bwrap runs as the build's host uid (see bwrap), and it resolves and mounts every
source as that uid, which must be able to search each directory down to it. Below a 0700
directory (``$XDG_RUNTIME_DIR``, pytest's temp dir, a 0700 bundle made when container root
is host root) it cannot. Then each such source's directory just below the deepest
unsearchable one is bound (``mount --rbind``, by root) at ``ALIAS/<n>`` on a tmpfs, in a mount
namespace of the build's own (``unshare --mount``: nothing changes on the host, nothing is
left to clean up), and bwrap is given the sources there.

As a normal user, bwrap runs as a subordinate uid in a user namespace the caller owns
(bwrap_userns), where the caller can mount: the same is done there, at ``user_alias_dir()``
(``/tmp/ocibuild-bwrap-<uid>``, a directory of the caller's; only a mount point, it stays empty).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from pytest_ocibuild.errors import RuntimeUnavailable

ALIAS = Path("/run/ocibuild-bwrap")  # a root-only directory: the tmpfs goes over it
# ALIAS SRC... -- COMMAND: bind each SRC at ALIAS/<n> (n = 0, 1, ...), then exec COMMAND
ALIAS_SH = ('a=$1; shift; mount -t tmpfs -o mode=0711,size=64k ocibuild-bwrap "$a" || '
            'exit 125; i=0; while [ "$1" != -- ]; do mkdir "$a/$i" && mount --rbind -- "$1" '
            '"$a/$i" || exit 125; i=$((i+1)); shift; done; shift; exec "$@"')
_BINDS = ("bind", "none", "rbind")


def below_unsearchable(path: str, uid: int, *gids: int) -> str | None:
    """The directory on ``path`` just below the deepest ancestor ``uid`` (with groups
    ``gids``) cannot search (None: it can search every ancestor)."""
    parts = Path(path).parts
    last = None
    for i in range(1, len(parts)):
        try:
            st = os.stat(Path(*parts[:i]))
        except OSError:
            return None  # bwrap says what is wrong
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid in gids \
            else stat.S_IXOTH
        if not st.st_mode & bit:
            last = i
    return None if last is None else str(Path(*parts[:last + 1]))


def aliased(config: dict[str, Any], bundle: Path, uid: int, *gids: int, at: Path = ALIAS,
            ) -> tuple[dict[str, Any], list[str]]:
    """``config`` with the root's and bind mounts' sources resolved (as root) and those that
    ``uid`` (groups ``gids``) cannot reach moved below ``at``; the directories to bind there, in
    order ([]: every source is reachable, ``config`` is returned as it is)."""
    below: dict[str, str | None] = {}  # a source's directory -> the ancestor blocking it
    dirs: list[str] = []

    def moved(source: str) -> str:
        real = os.path.realpath(source if source.startswith("/") else bundle / source)
        if not os.path.exists(real):
            return real  # bwrap says so
        parent = os.path.dirname(real)
        if parent not in below:  # the deepest ancestor they cannot search, from real's parent
            top = below_unsearchable(real, uid, *gids)
            below[parent] = None if top is None else os.path.dirname(top)
        blocker = below[parent]
        if blocker is None:
            return real
        top = os.path.join(blocker, Path(real).parts[len(Path(blocker).parts)])
        if top not in dirs:
            dirs.append(top)
        return f"{at}/{dirs.index(top)}{real[len(top):]}"

    out = dict(config)
    root = dict(out.get("root") or {})
    root["path"] = moved(root.get("path", "rootfs"))
    out["mounts"] = [{**m, "source": moved(m["source"])}
                     if (m.get("type") or "none") in _BINDS and m.get("source") else m
                     for m in out.get("mounts") or ()]
    out["root"] = root
    return (out, dirs) if dirs else (config, [])


def user_alias_dir() -> Path:
    """A normal user's alias mount point (``/tmp`` is searchable by every uid)."""
    return Path(f"/tmp/ocibuild-bwrap-{os.geteuid()}")


def ensure_alias_dir(path: Path = ALIAS) -> None:
    """``path`` exists, a directory only the caller (root: ``ALIAS``) may write to."""
    try:
        path.mkdir(mode=0o711, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise RuntimeUnavailable(f"bwrap: cannot create {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        who = "root" if os.geteuid() == 0 else "you"
        raise RuntimeUnavailable(f"bwrap: {path} is not a directory only {who} can write "
                                 f"(remove it)")
