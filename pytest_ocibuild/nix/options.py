"""nix-build's settings as ``ocibuild nix-build`` takes them (``--option NAME VALUE`` and the
options that stand for settings: ``--cores``, ``-j``, ``--timeout``, ``--max-silent-time``,
``--extra-experimental-features``, ...).

``NixOptions.apply`` folds them, in command-line order, into the settings read from
``nix.conf``; a setting this implementation does not honour is refused (NixError naming it),
never ignored silently. ``substituters`` is the one exception: a build here never substitutes,
so any value is accepted and said once on stderr.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from pytest_ocibuild.errors import NixError

# setting -> how its value is read
SETTINGS = {
    "system-features": "set", "sandbox-paths": "paths", "cores": "int", "max-jobs": "jobs",
    "timeout": "seconds", "max-silent-time": "seconds", "substituters": "ignored",
    "sandbox": "sandbox", "experimental-features": "set", "system": "str",
    "extra-platforms": "set", "keep-going": "bool", "keep-failed": "bool", "show-trace": "bool",
    "trusted-substituters": "ignored", "trusted-public-keys": "ignored",
    "require-sigs": "ignored-bool", "fallback": "ignored-bool", "substitute": "ignored-bool",
}
BOOL_KINDS = ("bool", "sandbox", "ignored-bool")
ALIASES = {"build-timeout": "timeout", "build-max-silent-time": "max-silent-time",
           "build-cores": "cores", "build-max-jobs": "max-jobs",
           "build-use-sandbox": "sandbox", "build-extra-sandbox-paths": "extra-sandbox-paths",
           "build-sandbox-paths": "sandbox-paths", "binary-caches": "substituters",
           "build-use-substitutes": "substitute"}
BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass
class NixOptions:
    """The settings given on the command line, ``None``: not given (nix.conf's value holds)."""

    features: set[str] | None = None  # system-features
    extra_features: set[str] = field(default_factory=set)  # extra-system-features
    experimental: set[str] | None = None  # experimental-features
    extra_experimental: set[str] = field(default_factory=set)
    sandbox_paths: list[str] | None = None
    extra_sandbox_paths: list[str] = field(default_factory=list)
    cores: int | None = None
    max_jobs: int | None = None
    timeout: float | None = None
    max_silent_time: float | None = None
    system: str | None = None
    extra_platforms: set[str] | None = None
    keep_going: bool = False
    keep_failed: bool = False
    show_trace: bool = False
    ignored: list[str] = field(default_factory=list)

    def set(self, name: str, value: str) -> None:
        """``--option NAME VALUE`` (``extra-NAME`` appends to list settings)."""
        name = ALIASES.get(name, name)
        extra = name.startswith("extra-") and name not in SETTINGS
        base = name if not extra else ALIASES.get(name[6:], name[6:])
        kind = SETTINGS.get(base)
        if kind is None or (extra and kind not in ("set", "paths")):
            raise NixError(f"--option {name}: not supported by ocibuild nix-build")
        if kind.startswith("ignored"):
            if name not in self.ignored:
                self.ignored.append(name)
            return
        if kind == "set":
            items = set(value.split())
            attr = {"system-features": "features", "experimental-features": "experimental",
                    "extra-platforms": "extra_platforms"}[base]
            if extra and attr == "extra_platforms":
                self.extra_platforms = (self.extra_platforms or set()) | items
            elif extra:
                getattr(self, f"extra_{attr}").update(items)
            else:
                setattr(self, attr, items)
                if attr == "features":
                    self.extra_features = set()
                elif attr == "experimental":
                    self.extra_experimental = set()
        elif kind == "paths":
            items = value.split()
            for p in items:
                check_sandbox_path(p)
            if extra:
                self.extra_sandbox_paths += items
            else:
                self.sandbox_paths, self.extra_sandbox_paths = items, []
        elif kind == "int":
            self.cores = _int(name, value)
        elif kind == "jobs":
            self.max_jobs = (os.cpu_count() or 1) if value == "auto" else _int(name, value)
        elif kind == "seconds":
            setattr(self, base.replace("-", "_"), float(_int(name, value)))
        elif kind == "str":
            self.system = value
        else:
            flag = _bool(name, value)
            if kind == "sandbox":
                if not flag or value == "relaxed":
                    raise NixError(f"--option {name} {value}: ocibuild nix-build always "
                                   "builds in a sandbox (only 'true' is accepted)")
            else:
                setattr(self, base.replace("-", "_"), flag)

    def say_ignored(self) -> None:
        """One line on stderr for the settings accepted without effect."""
        if self.ignored:
            print(f"ocibuild: note: ignoring {', '.join(self.ignored)}: builds here never use "
                  "substitutes", file=sys.stderr)

    def experimental_features(self, conf: set[str]) -> set[str]:
        base = self.experimental if self.experimental is not None else conf
        return base | self.extra_experimental

    def nix_args(self) -> list[str]:
        """What nix-instantiate needs of these options (experimental features, --show-trace)."""
        argv: list[str] = []
        if self.experimental is not None:
            argv += ["--experimental-features", " ".join(sorted(self.experimental))]
        if self.extra_experimental:
            argv += ["--extra-experimental-features", " ".join(sorted(self.extra_experimental))]
        if self.show_trace:
            argv.append("--show-trace")
        return argv

    def apply(self, settings: object, conf: dict[str, str]) -> object:
        """``settings`` (NixSettings from nix.conf) with these options folded in."""
        from pytest_ocibuild.nix.to_request import NixSettings

        assert isinstance(settings, NixSettings)
        features = set(settings.features) - {"ca-derivations"}
        if self.features is not None:
            features = set(self.features)
        features |= self.extra_features
        if "ca-derivations" in self.experimental_features(
                set(conf.get("experimental-features", "").split())):
            features.add("ca-derivations")  # StoreConfig::getDefaultSystemFeatures
        changes: dict[str, object] = {"features": frozenset(features)}
        if self.cores is not None:
            changes["cores"] = self.cores or os.cpu_count() or 1
        if self.system is not None:
            changes["system"] = self.system
        if self.extra_platforms is not None:
            changes["extra_platforms"] = frozenset(self.extra_platforms)
        if self.sandbox_paths is not None or self.extra_sandbox_paths:
            changes["sandbox_paths"] = tuple([*(self.sandbox_paths or ()),
                                              *self.extra_sandbox_paths])
        return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def check_sandbox_path(item: str) -> None:
    """A ``sandbox-paths`` entry we can honour: ``PATH`` (bound at the same place, ``PATH?``
    optional) or ``/bin/sh=BUSYBOX`` (the sandbox shell); anything else is refused."""
    target, sep, source = item.removesuffix("?").partition("=")
    if not target.startswith("/"):
        raise NixError(f"sandbox-paths: '{item}' is not an absolute path")
    clean = os.path.normpath(target)
    if clean in ("/", "/nix", "/build", "/proc", "/dev") or clean.startswith(
            ("/nix/store", "/build/")):
        raise NixError(f"sandbox-paths: '{item}' would cover the build's own "
                       f"{clean} (not supported)")
    if sep and target != source and target != "/bin/sh":
        raise NixError(f"sandbox-paths: '{item}': binding a host path at another place is "
                       "not supported (only /bin/sh=BUSYBOX)")


def sandbox_binds(paths: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``(host paths bound read-only, bind the sandbox shell at /bin/sh)``; optional
    (``?``) paths that do not exist are left out, a missing required one is an error."""
    binds: set[str] = set()
    bin_sh = False
    for item in paths:
        optional = item.endswith("?")
        target, sep, source = item.removesuffix("?").partition("=")
        source = source if sep else target
        if not os.path.exists(source):
            if optional:
                continue
            raise NixError(f"sandbox-paths: path '{source}' does not exist")
        if sep and target == "/bin/sh" and target != source:
            bin_sh = True
            continue
        binds.add(os.path.normpath(target))
    return tuple(sorted(binds)), bin_sh


def _int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise NixError(f"--option {name}: '{value}' is not an integer") from None
    if n < 0:
        raise NixError(f"--option {name}: '{value}' is negative")
    return n


def _bool(name: str, value: str) -> bool:
    if value.lower() not in BOOLS and value != "relaxed":
        raise NixError(f"--option {name}: '{value}' is not a Boolean")
    return BOOLS.get(value.lower(), False)
