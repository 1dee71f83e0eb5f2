"""An OCI ``linux.seccomp`` object compiled to classic BPF (what ``bwrap --seccomp FD`` loads).

A small ctypes wrapper over the system's libseccomp (``libseccomp.so.2``, the library runc
links), making the same calls runc 1.1 makes for a profile: ``seccomp_init(default)``, each
architecture, then for every rule and name ``seccomp_rule_add_array`` with all the rule's
argument conditions (ANDed; runc splits conditions on one same argument into separate
rules, ORed, which is done here too); names libseccomp does not know, and rules whose action
is the default one, are skipped, as runc skips them. ``seccomp_export_bpf`` writes the program.

``bpf_file`` caches it: compiled once per process per profile, written once per user (a file
named by the profile's digest under the runtime's state dir).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from pytest_ocibuild.errors import BundleError, RuntimeUnavailable

_ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
            "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
            "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
_ERRNO, _TRACE = 0x00050000, 0x7FF00000
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
EPERM = 1
_NR_ERROR = -1  # __NR_SCMP_ERROR: a name libseccomp does not know


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_lib: ctypes.CDLL | None = None
_lock = threading.Lock()
_compiled: dict[str, bytes] = {}  # profile digest -> program
_written: dict[tuple[str, str], Path] = {}  # (directory, digest) -> file


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise RuntimeUnavailable(f"cannot load libseccomp ({name}): {e} (install it: "
                                     "apt-get install libseccomp2)") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib = lib
    return _lib


def digest(profile: dict[str, Any]) -> str:
    """The profile's identity (sha256 of its canonical JSON)."""
    return hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()


def _action(name: str, errno: int | None, default_errno: int) -> int:
    if name == "SCMP_ACT_ERRNO":
        return _ERRNO | ((default_errno if errno is None else errno) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return _TRACE | ((default_errno if errno is None else errno) & 0xFFFF)
    try:
        return _ACTIONS[name]
    except KeyError:
        raise BundleError(f"linux.seccomp: unknown action {name!r}") from None


def _conditions(args: list[dict[str, Any]]) -> list[list[_ArgCmp]]:
    """The rule's conditions as libseccomp rules: one rule ANDing them, or (some argument
    named twice) one rule per condition, as runc does."""
    cmps = []
    for a in args:
        try:
            op = _OPS[a["op"]]
        except KeyError:
            raise BundleError(f"linux.seccomp: unknown operator {a.get('op')!r}") from None
        cmps.append(_ArgCmp(int(a["index"]), op, int(a.get("value", 0)),
                            int(a.get("valueTwo", 0))))
    if any(n > 1 for n in Counter(c.arg for c in cmps).values()):
        return [[c] for c in cmps]
    return [cmps]


def compile_bpf(profile: dict[str, Any]) -> bytes:
    """The classic BPF program of ``profile`` (an OCI ``linux.seccomp`` object)."""
    lib = _libseccomp()
    default_errno = int(profile.get("defaultErrnoRet", EPERM))
    default = _action(profile["defaultAction"], None, default_errno)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise BundleError("linux.seccomp: seccomp_init failed")
    try:
        for arch in profile.get("architectures", []):
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower()
                                                  .encode())
            if token == 0:
                raise BundleError(f"linux.seccomp: unknown architecture {arch!r}")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -17):  # -EEXIST: the native one
                raise BundleError(f"linux.seccomp: cannot add {arch}: {os.strerror(-rc)}")
        for rule in profile.get("syscalls", []):
            action = _action(rule["action"], rule.get("errnoRet"), EPERM)
            if action == default:
                continue  # what the default does anyway (libseccomp refuses it: EACCES)
            groups = _conditions(rule.get("args") or [])
            for name in rule["names"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_ERROR:
                    continue  # unknown to libseccomp: skipped, as runc does
                for cmps in groups:
                    array = (_ArgCmp * len(cmps))(*cmps)
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
                    if rc < 0:
                        raise BundleError(f"linux.seccomp: rule for {name} refused: "
                                          f"{os.strerror(-rc)}")
        r, w = os.pipe()
        try:
            chunks: list[bytes] = []
            reader = threading.Thread(target=_drain, args=(r, chunks))
            reader.start()
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            reader.join()
        finally:
            if w >= 0:
                os.close(w)
            os.close(r)
        if rc < 0:
            raise BundleError(f"linux.seccomp: cannot export the filter: {os.strerror(-rc)}")
        return b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)


def _drain(fd: int, chunks: list[bytes]) -> None:
    while data := os.read(fd, 65536):
        chunks.append(data)


def bpf_file(profile: dict[str, Any], directory: Path) -> Path:
    """``directory/seccomp-<digest>.bpf`` holding ``profile`` compiled (made once: compiled
    once per process, the file written atomically once per user and reused)."""
    key = digest(profile)
    with _lock:
        found = _written.get((str(directory), key))
        if found is not None:
            return found
        path = directory / f"seccomp-{key[:32]}.bpf"
        if not path.is_file():
            program = _compiled.get(key)
            if program is None:
                program = _compiled[key] = compile_bpf(profile)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                tmp.write_bytes(program)
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise RuntimeUnavailable(f"cannot write seccomp filter {path}: "
                                         f"{e.strerror}") from None
        _written[(str(directory), key)] = path
        return path
