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
    Option("runtime", "runtime", "OCI runtime binary, a name on PATH or a path", "runc"),
    Option("timeout", "timeout", "default per-build timeout in seconds (0: none)", "0"),
    Option("keep_bundles", "keep-bundles", "keep OCI bundles after builds, for debugging",
           "false", is_bool=True),
    Option("inputs", "inputs", f"input provider: {' or '.join(PROVIDERS)}", "materialize"),
    Option("cases", "cases", "glob (relative to rootdir; ** spans directories) of YAML case "
           "files to collect", "cases/**/*.yaml"),
    Option("progress", "progress", "report a running build every N seconds (0: never)", "10"),
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
    cases: str = "cases/**/*.yaml"
    progress: float = 10.0
    no_cache: bool = False

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
    store = raw["store"].removeprefix("local://")
    if store and not Path(store).is_absolute():
        store = str(config.rootpath / store)
    timeout = _number(raw["timeout"], "timeout")
    return Settings(
        store=store,
        runtime=raw["runtime"] or "runc",
        timeout=timeout or None,
        keep_bundles=_bool(raw["keep_bundles"], "keep_bundles"),
        inputs=raw["inputs"],
        cases=raw["cases"] or "cases/**/*.yaml",
        progress=_number(raw["progress"], "progress"),
        no_cache=_bool(raw["no_cache"], "no_cache"),
    )


SETTINGS_KEY = pytest.StashKey[Settings]()
