"""Store derivations: the model, an exact ATerm parser and writer, and the show-derivation JSON.

The writer reproduces Nix 2.8 ``Derivation::unparse`` byte for byte. The parser is strict where
Nix is lenient: it accepts exactly what the writer can produce, so ``write_drv(parse_drv(b)) == b``
for every accepted ``b``. Nix additionally tolerates unknown escapes (``\\x`` → ``x``), missing
commas, unsorted or duplicate entries (re-sorting them) and trailing bytes; all are rejected here
with a one-line NixError naming the byte offset.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix import nixbase32
from pytest_ocibuild.nix.hashes import HASH_SIZES, sha256
from pytest_ocibuild.nix.store_path import StorePath


class Output(NamedTuple):
    """One output as written in the ATerm: path ('' if not known), ``[r:]algo`` and hex hash."""

    path: str
    hash_algo: str = ""
    hash: str = ""


@dataclass(frozen=True, slots=True)
class Derivation:
    """A store derivation. Mappings are kept sorted; ``env`` values are bytes."""

    outputs: Mapping[str, Output]
    input_drvs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    input_srcs: tuple[str, ...] = ()
    system: str = ""
    builder: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def srt(m: Mapping[str, Any]) -> dict[str, Any]:
            return {k: m[k] for k in sorted(m)}

        object.__setattr__(self, "outputs", srt({k: Output(*v) for k, v in self.outputs.items()}))
        object.__setattr__(self, "input_drvs",
                           srt({k: tuple(sorted(set(v))) for k, v in self.input_drvs.items()}))
        object.__setattr__(self, "input_srcs", tuple(sorted(set(self.input_srcs))))
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env", srt({k: v if isinstance(v, bytes) else str(v).encode()
                                             for k, v in self.env.items()}))

    @property
    def name(self) -> str:
        """The derivation name: ``env["name"]``, or ``name`` in ``__json`` (structured attrs)."""
        try:
            if "name" in self.env:
                return self.env["name"].decode()
            name = json.loads(self.env["__json"]).get("name")
            if isinstance(name, str):
                return name
        except (KeyError, UnicodeDecodeError, ValueError, AttributeError):
            pass
        raise NixError("derivation has no 'name' (in env or in __json)")

    @property
    def structured_attrs(self) -> dict[str, Any] | None:
        """The decoded ``__json`` attribute set, or None without ``__structuredAttrs``."""
        if "__json" not in self.env:
            return None
        try:
            value = json.loads(self.env["__json"])
        except ValueError as e:
            raise NixError(f"derivation __json is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise NixError("derivation __json is not a JSON object")
        return value

    def to_json(self) -> dict[str, Any]:
        """One entry of ``nix show-derivation`` (Nix 2.8 shape; env values decoded lossily)."""
        outs: dict[str, Any] = {}
        for oname, o in self.outputs.items():
            entry: dict[str, str] = {"path": o.path} if o.path else {}
            if o.hash_algo:
                entry["hashAlgo"] = o.hash_algo
            if o.hash and o.hash != "impure":
                entry["hash"] = o.hash
            outs[oname] = entry
        return {
            "outputs": outs,
            "inputSrcs": list(self.input_srcs),
            "inputDrvs": {k: list(v) for k, v in self.input_drvs.items()},
            "system": self.system,
            "builder": self.builder,
            "args": list(self.args),
            "env": {k: v.decode("utf-8", "replace") for k, v in self.env.items()},
        }

    def to_json_text(self, drv_path: str) -> str:
        """``{drv_path: to_json()}`` as indented JSON."""
        return json.dumps({drv_path: self.to_json()}, indent=2, ensure_ascii=False)


def pass_as_file_path(name: str, build_top: str = "/build") -> str:
    """Where Nix puts a ``passAsFile`` attribute: ``<top>/.attr-<nixbase32(sha256(name))>``."""
    return f"{build_top}/.attr-{nixbase32.encode(sha256(name.encode()))}"


# ---------------------------------------------------------------------------------------- writer

_ESCAPES = {ord('"'): b'\\"', ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r",
            ord("\t"): b"\\t"}


def _quote(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if not any(b in _ESCAPES for b in raw):
        return b'"' + raw + b'"'
    return b'"' + b"".join(_ESCAPES.get(b, bytes((b,))) for b in raw) + b'"'


def _list(items: Any) -> bytes:
    return b"[" + b",".join(_quote(i) for i in items) + b"]"


def write_drv(drv: Derivation) -> bytes:
    """Serialise to ATerm exactly as Nix 2.8 writes ``.drv`` files."""
    outs = b",".join(b"(" + _quote(n) + b"," + _quote(o.path) + b"," + _quote(o.hash_algo)
                     + b"," + _quote(o.hash) + b")" for n, o in drv.outputs.items())
    ins = b",".join(b"(" + _quote(p) + b"," + _list(o) + b")" for p, o in drv.input_drvs.items())
    env = b",".join(b"(" + _quote(k) + b"," + _quote(v) + b")" for k, v in drv.env.items())
    return (b"Derive([" + outs + b"],[" + ins + b"]," + _list(drv.input_srcs) + b","
            + _quote(drv.system) + b"," + _quote(drv.builder) + b"," + _list(drv.args)
            + b",[" + env + b"])")


# ---------------------------------------------------------------------------------------- parser

_UNESCAPE = {ord('"'): ord('"'), ord("\\"): ord("\\"), ord("n"): 10, ord("r"): 13, ord("t"): 9}


class _Parser:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, msg: str, pos: int | None = None) -> NixError:
        where = self.pos if pos is None else pos
        return NixError(f"{self.source}: malformed derivation at byte {where}: {msg}")

    def expect(self, token: bytes) -> None:
        end = self.pos + len(token)
        if self.data[self.pos:end] != token:
            got = self.data[self.pos:end]
            raise self.fail(f"expected {token.decode()!r}, got "
                            + (repr(got.decode("latin-1")) if got else "end of input"))
        self.pos = end

    def raw_string(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.fail("unterminated string")
            c = data[self.pos]
            if c == 0x22:
                self.pos += 1
                return bytes(out)
            if c == 0x5C:
                if self.pos + 1 >= len(data):
                    raise self.fail("unterminated string")
                e = _UNESCAPE.get(data[self.pos + 1])
                if e is None:
                    raise self.fail(f"bad escape {data[self.pos:self.pos + 2].decode('latin-1')!r}")
                out.append(e)
                self.pos += 2
            elif c in (10, 13, 9):
                raise self.fail(f"unescaped control character {chr(c)!r} in string")
            else:
                out.append(c)
                self.pos += 1

    def string(self) -> str:
        start = self.pos
        raw = self.raw_string()
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise self.fail(f"invalid UTF-8 in string ({e.reason})", start) from None

    def unquoted(self, what: str, allow_empty: bool = False) -> str:
        """A string Nix writes without escaping: it must not need any."""
        start = self.pos
        s = self.string()
        if any(c in s for c in '"\\\n\r\t'):
            raise self.fail(f"{what} {s!r} contains a character Nix does not escape here", start)
        if not s and not allow_empty:
            raise self.fail(f"empty {what}", start)
        return s

    def store_path(self, what: str, allow_empty: bool = False) -> str:
        start = self.pos
        s = self.unquoted(what, allow_empty)
        if s:
            try:
                StorePath.from_absolute(s)
            except NixError as e:
                raise self.fail(f"bad {what}: {e}", start) from None
        return s

    def items(self, item: Any) -> list[Any]:
        """``[a,b,...]``: the opening bracket is already consumed."""
        out: list[Any] = []
        if self.data[self.pos:self.pos + 1] == b"]":
            self.pos += 1
            return out
        while True:
            out.append(item())
            if self.data[self.pos:self.pos + 1] == b"]":
                self.pos += 1
                return out
            self.expect(b",")

    def sorted_keys(self, keys: list[str], what: str, start: int) -> None:
        for a, b in itertools.pairwise(keys):
            if a >= b:  # code point order is UTF-8 byte order
                kind = "duplicate" if a == b else "unsorted"
                raise self.fail(f"{kind} {what} {b!r} (after {a!r})", start)

    def output(self) -> tuple[str, Output]:
        self.expect(b"(")
        name = self.unquoted("output name")
        self.expect(b",")
        path = self.store_path("output path", allow_empty=True)
        self.expect(b",")
        start = self.pos
        algo = self.unquoted("hash algorithm", allow_empty=True)
        bare = algo.removeprefix("r:")
        if algo and bare not in HASH_SIZES:
            raise self.fail(f"unknown hash algorithm {algo!r}", start)
        self.expect(b",")
        start = self.pos
        digest = self.unquoted("hash", allow_empty=True)
        if digest and digest != "impure":
            size = HASH_SIZES.get(bare, 0)
            if len(digest) != 2 * size or digest.strip("0123456789abcdef"):
                raise self.fail(f"hash {digest!r} is not lowercase base-16 {bare or 'hash'}", start)
        if digest and not algo:
            raise self.fail("output has a hash but no hash algorithm", start)
        self.expect(b")")
        return name, Output(path, algo, digest)

    def input_drv(self) -> tuple[str, tuple[str, ...]]:
        self.expect(b"(")
        path = self.store_path("input derivation path")
        self.expect(b",[")
        start = self.pos
        names = self.items(lambda: self.unquoted("output name"))
        self.sorted_keys(names, "output name", start)
        self.expect(b")")
        return path, tuple(names)

    def env_pair(self) -> tuple[str, bytes]:
        self.expect(b"(")
        key = self.string()
        self.expect(b",")
        value = self.raw_string()
        self.expect(b")")
        return key, value

    def derivation(self) -> Derivation:
        self.expect(b"Derive([")
        start = self.pos
        outputs = self.items(self.output)
        self.sorted_keys([n for n, _ in outputs], "output", start)
        self.expect(b",[")
        start = self.pos
        input_drvs = self.items(self.input_drv)
        self.sorted_keys([p for p, _ in input_drvs], "input derivation", start)
        self.expect(b",[")
        start = self.pos
        srcs = self.items(lambda: self.store_path("input source"))
        self.sorted_keys(srcs, "input source", start)
        self.expect(b",")
        system = self.unquoted("system")
        self.expect(b",")
        builder = self.string()
        self.expect(b",[")
        args = self.items(self.string)
        self.expect(b",[")
        start = self.pos
        env = self.items(self.env_pair)
        self.sorted_keys([k for k, _ in env], "environment variable", start)
        self.expect(b")")
        if self.pos != len(self.data):
            raise self.fail("trailing data after the derivation")
        return Derivation(outputs=dict(outputs), input_drvs=dict(input_drvs),
                          input_srcs=tuple(srcs), system=system, builder=builder,
                          args=tuple(args), env=dict(env))


def parse_drv(data: bytes, *, source: str) -> Derivation:
    """Parse a ``.drv`` file; any malformation raises a one-line NixError citing ``source``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise NixError(f"{source}: derivation must be bytes, not {type(data).__name__}")
    return _Parser(bytes(data), source).derivation()
