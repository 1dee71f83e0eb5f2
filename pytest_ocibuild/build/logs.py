"""A build's log on disk: its output kept once, and which bytes came from which stream.

``<log>``
    stdout and stderr, each chunk as the runtime read it, in the order read;
``<log>.runs``
    one 5-byte record per chunk: the stream (1 stdout, 2 stderr) and the chunk's length
    (u32, little-endian), in the same order.

So stdout alone is the chunks of stream 1, read back from ``<log>`` (``read_stream``), and no
byte of output is stored twice. Logs written before ``.runs`` existed kept each stream in a
file of its own, ``<log>.stdout`` and ``<log>.stderr``; those are still read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from pytest_ocibuild.build.atomic import staging_path

STREAMS = ("stdout", "stderr")
RUNS = ".runs"
_RECORD = struct.Struct("<BI")
_STREAM_ID = {"stdout": 1, "stderr": 2}


def runs_path(log: str | os.PathLike[str]) -> Path:
    """Where the chunk records of ``log`` are."""
    return Path(f"{os.fspath(log)}{RUNS}")


def files(log: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Every file a log may consist of (those that exist or not)."""
    base = os.fspath(log)
    return (Path(base), runs_path(base), *(Path(f"{base}.{s}") for s in STREAMS))


def create(log: Path) -> None:
    """Start an empty log (the runtime appends to both files)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for path in (log, runs_path(log)):
        path.write_bytes(b"")


def _runs(data: bytes) -> Iterator[tuple[int, int]]:
    for i in range(0, len(data) - len(data) % _RECORD.size, _RECORD.size):
        yield _RECORD.unpack_from(data, i)


def read_stream(log: str | os.PathLike[str] | None, stream: str) -> bytes:
    """What the build wrote to ``stream`` (``stdout`` or ``stderr``); b'' if nothing is kept."""
    if log is None:
        return b""
    try:
        runs = runs_path(log).read_bytes()
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            return Path(f"{os.fspath(log)}.{stream}").read_bytes()
        return b""
    want = _STREAM_ID[stream]
    out = bytearray()
    with open(log, "rb") as f:
        offset = 0
        for sid, length in _runs(runs):
            if sid == want:
                f.seek(offset)
                out += f.read(length)
            offset += length
    return bytes(out)


def keep(source: Path, target: Path, *, move: bool, tmp_dir: Path | None = None) -> None:
    """Put the log ``source`` at ``target``, atomically replacing one there: renamed when
    ``move`` (it was written for this), else hard-linked, or copied across file systems, via
    a staging name in ``tmp_dir`` (default: beside ``target``; it must be on target's file
    system). The log itself goes last, so a log in place has its runs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    pairs = list(zip(files(source), files(target), strict=True))
    for src, dst in (*pairs[1:], pairs[0]):
        if not src.exists():
            dst.unlink(missing_ok=True)
        elif move:
            os.replace(src, dst)
        else:
            staging = staging_path(tmp_dir or dst.parent, ".log")
            try:
                os.link(src, staging)
            except OSError:
                shutil.copyfile(src, staging)
            os.replace(staging, dst)
            staging.unlink(missing_ok=True)  # rename() of a link onto itself does nothing


def remove(log: Path) -> int:
    """Delete every file of ``log``; returns the bytes freed."""
    freed = 0
    for path in files(log):
        with contextlib.suppress(FileNotFoundError):
            freed += path.stat().st_size
            path.unlink()
    return freed


LOG_TAIL_LINES = 25


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
