"""Where things live by default: the store, and the per-user place of runc state and bundles.

A light module (the CLI reads it before anything heavy). Containers, mounts and bundle
directories of every run of one user live in one place, whatever store or pytest basetemp a
run uses, so that any later start (``purge``) finds what a killed run left:
``$XDG_RUNTIME_DIR/ocibuild`` when that is set, an absolute directory of ours and writable,
else ``/tmp/ocibuild-<uid>`` (created 0711 and, in shared ``/tmp``, checked to be a real
directory owned by us that nobody else can write to; refused with one line otherwise).
Other users may traverse it (a build's mapped ids reach its bundle's files) but not list it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pytest_ocibuild.errors import RuntimeUnavailable

TMP_BASE = "/tmp"  # the fallback base; our directory in it is checked (see user_dir)


def default_store_dir() -> Path:
    """``$OCIBUILD_STORE`` or the per-user cache dir (``$XDG_CACHE_HOME/ocibuild/store``)."""
    env = os.environ.get("OCIBUILD_STORE")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ocibuild" / "store"


def runtime_state_dir(runtime: str = "runc") -> Path:
    """A runtime's ``--root`` for every build of this user: ``<user dir>/<runtime>`` (mode
    0700)."""
    return _subdir(runtime, 0o700)


def bundle_root() -> Path:
    """Where bundles are made by default: ``<user dir>/bundles`` (mode 0711).

    On a tmpfs ``$XDG_RUNTIME_DIR`` the materialize provider copies input files instead of
    hardlinking them (another file system than the store's).
    """
    return _subdir("bundles", 0o711)


def user_dir() -> Path:
    """The per-user directory (see the module docstring), created if missing."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _ours(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return _checked(Path(xdg) / "ocibuild")
    return _checked(Path(TMP_BASE) / f"ocibuild-{os.geteuid()}")


def _ours(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _subdir(name: str, mode: int) -> Path:
    return _checked(user_dir() / name, mode)


def _checked(path: Path, mode: int = 0o711) -> Path:
    """``path`` made (``mode``) if missing; RuntimeUnavailable unless it is a directory (not a
    symlink) owned by us that no one else may write to."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as e:
        raise RuntimeUnavailable(f"cannot create {path}: {e.strerror}") from None
    try:
        st = os.lstat(path)
    except OSError as e:
        raise RuntimeUnavailable(f"cannot use {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        why = "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return path
    raise RuntimeUnavailable(f"refusing to use {path}: it {why}; remove it or set "
                             "XDG_RUNTIME_DIR to a directory of yours")
