"""Plugin settings: command-line options mirrored as ini keys, frozen into ``Settings``.

Precedence: command line, then the ini file (``[tool.pytest.ini_options]``), then the default.
Settings are plain data, so they can travel to xdist workers unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

PROVIDERS = ("materialize", "fuse")
DEFAULT_CASES = "cases/"


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: ``--ocibuild-<flag>`` on the command line and ``ocibuild_<key>`` in ini."""

    key: str
    flag: str
    help: str
    default: str
    is_bool: bool = False


OPTIONS = (
    Option("store", "store", "castore and result cache directory, shared by runs and xdist "
           "workers (default: $OCIBUILD_STORE, else ~/.cache/ocibuild/store)", ""),
    Option("runtime", "runtime", "sandbox runtime: runc, crun, runsc, bwrap, or the path of a "
           "runc-compatible binary", "runc"),
    Option("timeout", "timeout", "default per-build timeout in seconds, > 0 (empty or "
           "'none': no timeout)", "none"),
    Option("keep_bundles", "keep-bundles", "keep OCI bundles after builds, for debugging (the "
           "summary names where; 'ocibuild store purge --kept' removes them)",
           "false", is_bool=True),
    Option("inputs", "inputs", f"input provider: {' or '.join(PROVIDERS)}", "materialize"),
    Option("cases", "cases", "where YAML case files are collected: directories or globs "
           "relative to rootdir (** spans directories), separated by spaces; empty: none",
           DEFAULT_CASES),
    Option("progress", "progress", "report a running build every N seconds (0: never)", "10"),
    Option("limits", "limits", "resource limits for builds whose case sets none, e.g. "
           "'pids=512 memory=2G disk=5G entries=100000 max_silent_time=60' (README "
           "\"Sandbox\"; default: the executor's)", ""),
    Option("no_cache", "no-cache", "build every case again instead of using recorded results "
           "(results are still recorded)", "false", is_bool=True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Resolved plugin settings."""

    store: str = ""  # empty: build.executor.default_store_dir()
    runtime: str = "runc"
    timeout: float | None = None
    keep_bundles: bool = False
    inputs: str = "materialize"
    cases: str = DEFAULT_CASES
    progress: float = 10.0
    no_cache: bool = False
    limits: dict[str, Any] | None = None  # build.limits.Limits fields (plain, for xdist)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ``workerinput``)."""
        return asdict(self)


def add_options(parser: pytest.Parser) -> None:
    """Register the ``ocibuild`` option group and the matching ini keys."""
    group = parser.getgroup("ocibuild", "sandboxed OCI builds (pytest-ocibuild)")
    for opt in OPTIONS:
        dest = f"ocibuild_{opt.key}"
        if opt.is_bool:
            group.addoption(f"--ocibuild-{opt.flag}", action="store_true", default=None,
                            dest=dest, help=opt.help)
        else:
            group.addoption(f"--ocibuild-{opt.flag}", dest=dest, default=None,
                            metavar=opt.key.upper(), help=opt.help)
        parser.addini(dest, f"{opt.help} (default: {opt.default or 'see --ocibuild-store'})",
                      default=opt.default)


def _raw(config: pytest.Config, opt: Option) -> str:
    value = config.getoption(f"ocibuild_{opt.key}", None)
    if value is None:
        value = config.getini(f"ocibuild_{opt.key}")
    return str(value).strip()


def _number(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"ocibuild_{key}: {text!r} is not a number of seconds") from None
    if value < 0:
        raise pytest.UsageError(f"ocibuild_{key}: must not be negative, got {text}")
    return value


def _timeout(text: str, key: str) -> float | None:
    """A timeout: seconds > 0, or none (empty, ``none``); the same rule as a case's."""
    if text.lower() in ("", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"ocibuild_{key}: {text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise pytest.UsageError(f"ocibuild_{key}: must be more than 0 seconds, got {text} "
                                "(leave it empty, or 'none', for no timeout)")
    return value


def _limits(text: str, key: str) -> dict[str, Any] | None:
    """``name=value`` pairs checked as build.limits.Limits fields (None: none given)."""
    from pytest_ocibuild.build.limits import Limits
    from pytest_ocibuild.errors import InvalidRequest

    out: dict[str, Any] = {}
    for item in text.split():
        name, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"ocibuild_{key}: {item!r} is not name=value")
        out[name] = int(value) if value.isdigit() and name in ("pids", "entries") else \
            float(value) if name == "max_silent_time" and _is_number(value) else value
    try:
        return Limits.from_dict(out, f"ocibuild_{key}").to_dict() or None
    except InvalidRequest as e:
        raise pytest.UsageError(f"ocibuild_{key}: {e.message}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bool(text: str, key: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise pytest.UsageError(f"ocibuild_{key}: {text!r} is not a boolean (true/false)")


def read_settings(config: pytest.Config) -> Settings:
    """Settings from the command line and ini file; bad values raise ``pytest.UsageError``."""
    raw = {opt.key: _raw(config, opt) for opt in OPTIONS}
    if raw["inputs"] not in PROVIDERS:
        raise pytest.UsageError(
            f"ocibuild_inputs: {raw['inputs']!r} is not an input provider "
            f"(choose {' or '.join(PROVIDERS)})"
        )
    _runtime(raw["runtime"] or "runc")
    store = raw["store"].removeprefix("local://")
    if store and not Path(store).is_absolute():
        store = str(config.rootpath / store)
    return Settings(
        store=store,
        runtime=raw["runtime"] or "runc",
        timeout=_timeout(raw["timeout"], "timeout"),
        keep_bundles=_bool(raw["keep_bundles"], "keep_bundles"),
        inputs=raw["inputs"],
        cases=raw["cases"],  # empty: collect no case files
        progress=_number(raw["progress"], "progress"),
        no_cache=_bool(raw["no_cache"], "no_cache"),
        limits=_limits(raw["limits"], "limits"),
    )


SETTINGS_KEY = pytest.StashKey[Settings]()


def _runtime(name: str) -> None:
    """UsageError unless ``name`` is a runtime (build.runtime.open_runtime accepts it)."""
    from pytest_ocibuild.build.runtime import RUNTIMES

    if name not in (*RUNTIMES, "fake") and "/" not in name:
        raise pytest.UsageError(f"ocibuild_runtime: unknown runtime {name!r} (choose "
                                f"{', '.join(RUNTIMES)}, or the path of a runc-compatible "
                                "binary)")
