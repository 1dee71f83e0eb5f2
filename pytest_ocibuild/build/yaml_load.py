"""Bounded YAML and JSON loading for request and case files.

Untrusted files may be huge, deeply nested, not UTF-8, or alias bombs (a few lines of anchors
that expand to billions of nodes). ``compose`` parses with libyaml (``CSafeLoader``; the
pure-Python ``SafeLoader`` if libyaml is missing) and measures the node graph before anything
is constructed: nodes after alias expansion, nodes added by aliases and nesting depth are
counted without expanding, in time linear in the file. Every problem is one ``YamlLoadError``
with the 1-based line where the parser gives one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one file; the defaults are far above any real request or case file."""

    max_bytes: int = 16 << 20  # file size
    max_nodes: int = 1_000_000  # nodes after alias expansion
    max_alias_nodes: int = 100_000  # nodes that exist only because of alias expansion
    max_depth: int = 64  # nesting of mappings and sequences


LIMITS = Limits()


class YamlLoadError(ValueError):
    """The file is not one we load; ``line`` is 1-based, or None if unknown."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line

    def where(self, source: object) -> str:
        """``source:line`` (or just ``source``) for a one-line message."""
        return f"{source}:{self.line}" if self.line is not None else str(source)


def read_bounded(path: Path, limits: Limits = LIMITS) -> bytes:
    """At most ``limits.max_bytes`` of ``path`` (OSError if it cannot be read)."""
    with path.open("rb") as f:  # never read more than the bound (e.g. /dev/zero)
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise YamlLoadError(f"file larger than {limits.max_bytes} bytes")
    return data


def decode(data: bytes | str, limits: Limits = LIMITS) -> str:
    """UTF-8 text (a leading BOM dropped); non-UTF-8 bytes are an error citing their line."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise YamlLoadError(f"not UTF-8 text (byte 0x{data[e.start]:02x})", line) from None
    if len(text) > limits.max_bytes:
        raise YamlLoadError(f"file larger than {limits.max_bytes} bytes")
    return text.removeprefix("\ufeff")


class _DepthComposer(yaml.SafeLoader):
    """The pure-Python loader with nesting bounded while composing (it recurses per level)."""

    max_depth = LIMITS.max_depth
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > self.max_depth + 1:
                mark = self.peek_event().start_mark
                raise YamlLoadError(f"nested deeper than {self.max_depth} levels", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_C_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml: ~8x faster, nesting capped in C


def _loader(text: str, limits: Limits) -> Any:
    if _C_LOADER is not None:
        return _C_LOADER(text)
    loader = _DepthComposer(text)
    loader.max_depth = limits.max_depth
    return loader


@contextmanager
def compose(data: bytes | str, limits: Limits = LIMITS) -> Iterator[tuple[Any, Any]]:
    """``(loader, root node or None)`` of one YAML document, measured against ``limits``.

    The loader (a SafeLoader) constructs values from the nodes; it is disposed on exit.
    """
    text = decode(data, limits)
    loader = _loader(text, limits)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            raise _yaml_error(e) from None
        except RecursionError:
            raise YamlLoadError(f"nested deeper than {limits.max_depth} levels") from None
        if node is not None:
            measure(node, limits)
        yield loader, node
    finally:
        loader.dispose()


def measure(root: Any, limits: Limits = LIMITS) -> int:
    """Nodes under ``root`` after alias expansion; YamlLoadError past a limit or on a cycle.

    Memoised per node object, so an alias bomb costs its size in the file. The recursion is
    at most ``max_depth`` deep: nesting is checked before descending.
    """
    seen: dict[int, tuple[int, int]] = {}  # id(collection) -> (expanded size, height)
    active: set[int] = set()
    distinct = 0

    def visit(node: Any, depth: int) -> tuple[int, int]:
        nonlocal distinct
        if not isinstance(node, yaml.CollectionNode):
            return 1, 0
        key = id(node)
        known = seen.get(key)
        if known is None:
            if key in active:
                raise YamlLoadError("recursive alias", node.start_mark.line + 1)
            if depth > limits.max_depth:
                raise YamlLoadError(f"nested deeper than {limits.max_depth} levels",
                                    node.start_mark.line + 1)
            active.add(key)
            items = (node.value if isinstance(node, yaml.SequenceNode)
                     else [n for pair in node.value for n in pair])
            total, height = 1, 0
            for child in items:
                size, h = visit(child, depth + 1)
                total += size
                height = max(height, h)
            distinct += 1 + sum(not isinstance(c, yaml.CollectionNode) for c in items)
            active.discard(key)
            known = seen[key] = (total, height + 1)
            if total > limits.max_nodes:
                raise YamlLoadError(f"more than {limits.max_nodes} nodes after alias expansion",
                                    node.start_mark.line + 1)
            if total - distinct > limits.max_alias_nodes:
                raise YamlLoadError(
                    f"aliases expand to more than {limits.max_alias_nodes} nodes",
                    node.start_mark.line + 1)
        if depth - 1 + known[1] > limits.max_depth:  # an alias placed deeper than its anchor
            raise YamlLoadError(f"nested deeper than {limits.max_depth} levels",
                                node.start_mark.line + 1)
        return known

    return visit(root, 1)[0]


def _yaml_error(e: yaml.YAMLError) -> YamlLoadError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        return YamlLoadError(str(e.problem or e.context or "malformed YAML"),
                             mark.line + 1 if mark else None)
    return YamlLoadError(str(e).splitlines()[0] if str(e) else "malformed YAML")


def construct(loader: Any, node: Any) -> Any:
    """The value of ``node`` (composed by ``loader``); bad scalars are a YamlLoadError."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise _yaml_error(e) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. int('9' * 5000)
        problem = str(e).splitlines()[0].split(";")[0] if str(e) else type(e).__name__
        raise YamlLoadError(f"bad value: {problem}", node.start_mark.line + 1) from None


def load_yaml(data: bytes | str, limits: Limits = LIMITS) -> Any:
    """The plain data of one YAML document (safe tags only), bounded by ``limits``."""
    with compose(data, limits) as (loader, node):
        return None if node is None else construct(loader, node)


def load_json(data: bytes | str, limits: Limits = LIMITS) -> Any:
    """The data of a JSON document, bounded in size and nesting like YAML."""
    text = decode(data, limits)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise YamlLoadError(e.msg, e.lineno) from None
    except RecursionError:
        raise YamlLoadError(f"nested deeper than {limits.max_depth} levels") from None
    except ValueError as e:  # e.g. an integer with too many digits
        raise YamlLoadError(f"bad value: {str(e).splitlines()[0].split(';')[0]}") from None
    _check_depth(value, limits.max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise YamlLoadError(f"nested deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                  else item))
