"""Derivation → BuildRequest, reproducing what Nix 2.8's sandbox gives a builder (pure, no IO).

The layout follows ``docs/nix-sandbox.md``: scratch paths ``build`` (``/build``, the working
directory) and ``nix/store`` (writable like Nix's, each input bound read-only on top by name),
one output per ``nix/store/<base name>``. The environment is built in the order of
``LocalDerivationGoal::initEnv`` so that the same variables win: ``PATH``, ``HOME``,
``NIX_STORE`` and ``NIX_BUILD_CORES`` may be overridden by the derivation; ``NIX_BUILD_TOP``,
``TMPDIR``…``PWD``, ``NIX_OUTPUT_CHECKED``, impure variables, ``NIX_LOG_FD`` and ``TERM``
override it. Output placeholders are rewritten to the paths the outputs are built at in the
environment, the arguments and the files written into ``/build``, as Nix does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.build.request import AdditionalFile, BuildRequest, Constraints, EnvVar
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.attrs import export_graph_files, structured_files
from pytest_ocibuild.nix.closure import PathInfo
from pytest_ocibuild.nix.derivation import Derivation, pass_as_file_path
from pytest_ocibuild.nix.drv_hash import derivation_type
from pytest_ocibuild.nix.hashes import Hash
from pytest_ocibuild.nix.store_path import (
    STORE_DIR,
    StorePath,
    hash_placeholder,
    make_store_path,
    output_path_name,
)

BUILD_TOP = "/build"
HOME = "/homeless-shelter"
STORE_SCRATCH = STORE_DIR.lstrip("/")  # "nix/store"
DEFAULT_FEATURES = frozenset({"benchmark", "big-parallel", "nixos-test"})


@dataclass(frozen=True, slots=True, kw_only=True)
class NixSettings:
    """The Nix settings a build depends on (``nix show-config`` names in comments)."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)  # cores
    system: str = "x86_64-linux"  # system
    extra_platforms: frozenset[str] = frozenset({"i686-linux"})  # extra-platforms
    features: frozenset[str] = DEFAULT_FEATURES  # system-features (+ ca-derivations)
    environ: Mapping[str, str] = field(default_factory=dict)  # the caller's, for impureEnvVars
    sandbox_paths: tuple[str, ...] = ()  # sandbox-paths + extra-sandbox-paths
    max_silent_time: float | None = None  # max-silent-time: the request's limits


def strings_attr(drv: Derivation, name: str) -> list[str] | None:
    """Nix ``getStringsAttr``: a JSON list of strings with structured attrs, else the env value
    split on whitespace; None if absent."""
    attrs = drv.structured_attrs
    if attrs is not None:
        value = attrs.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise NixError(f"attribute '{name}' must be a list of strings")
        return list(value)
    raw = drv.env.get(name)
    return None if raw is None else raw.decode().split()


def is_sandboxed(drv: Derivation) -> bool:
    """Nix ``isSandboxed``: false for fixed-output (and impure) derivations."""
    return derivation_type(drv) not in ("fixed", "impure")


def fallback_path(drv_path: str, drv: Derivation, output: str) -> StorePath:
    """Nix ``makeFallbackPath``: where an output whose path is unknown (floating CA) is built."""
    base = StorePath.from_absolute(drv_path).base_name
    return make_store_path(f"rewrite:{base}:name:{output}", "0" * 64,
                           output_path_name(drv.name, output))


def scratch_paths(drv: Derivation, drv_path: str) -> dict[str, str]:
    """Output name → the store path the builder writes it at (known path, else fallback)."""
    return {o: out.path or fallback_path(drv_path, drv, o).absolute
            for o, out in drv.outputs.items()}


def rewrite_strings(s: bytes, rewrites: Mapping[bytes, bytes]) -> bytes:
    """Nix ``rewriteStrings``: each rewrite in key order, all occurrences."""
    for k in sorted(rewrites):
        if k != rewrites[k]:
            s = s.replace(k, rewrites[k])
    return s


def check_platform(drv: Derivation, drv_path: str, settings: NixSettings) -> None:
    """Nix ``canBuildLocally``, with its message when it cannot."""
    required = set(strings_attr(drv, "requiredSystemFeatures") or [])
    if derivation_type(drv) in ("floating", "deferred", "impure"):
        required.add("ca-derivations")
    builtin = drv.builder.startswith("builtin:")
    ok = (drv.system == settings.system or drv.system in settings.extra_platforms or builtin)
    if not ok or not required <= settings.features:
        raise NixError(
            f"a '{drv.system}' with features {{{', '.join(sorted(required))}}} is required to "
            f"build '{drv_path}', but I am a '{settings.system}' with features "
            f"{{{', '.join(sorted(settings.features))}}}", reason="unsupported-platform")


def derivation_to_request(
    drv: Derivation,
    drv_path: str,
    inputs: Mapping[str, PathInfo],
    *,
    settings: NixSettings,
    scratch: Mapping[str, str] | None = None,
    drv_outputs: Mapping[str, Sequence[str]] | None = None,
) -> BuildRequest:
    """The BuildRequest that builds ``drv`` as Nix's sandbox would.

    ``inputs``: the input closure (store path → PathInfo), all bound into ``/nix/store``;
    ``scratch``: output name → path it is built at (default ``scratch_paths``);
    ``drv_outputs``: output paths of built derivations (for ``exportReferencesGraph``).
    """
    if drv.builder.startswith("builtin:"):
        raise NixError(f"{drv_path}: builtin builder '{drv.builder}' is not supported")
    scratch = dict(scratch or scratch_paths(drv, drv_path))
    rewrites = {hash_placeholder(o).encode(): p.encode() for o, p in scratch.items()}
    sandboxed = is_sandboxed(drv)

    env: dict[str, bytes] = {"PATH": b"/path-not-set", "HOME": HOME.encode(),
                             "NIX_STORE": STORE_DIR.encode(),
                             "NIX_BUILD_CORES": str(settings.cores).encode()}
    files: dict[str, bytes] = {}
    attrs = drv.structured_attrs
    if attrs is None:
        pass_as_file = set((drv.env.get("passAsFile") or b"").decode().split())
        for k, v in drv.env.items():
            if k in pass_as_file:
                path = pass_as_file_path(k, BUILD_TOP)
                files[path.rsplit("/", 1)[1]] = rewrite_strings(v, rewrites)
                env[k + "Path"] = path.encode()
            else:
                env[k] = v
    for k in ("NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"):
        env[k] = BUILD_TOP.encode()
    if derivation_type(drv) == "fixed":
        env["NIX_OUTPUT_CHECKED"] = b"1"
    if not sandboxed:
        for name in strings_attr(drv, "impureEnvVars") or []:
            env[name] = settings.environ.get(name, "").encode()
    env["NIX_LOG_FD"] = b"2"
    env["TERM"] = b"xterm-256color"

    def rewrite(s: str) -> str:
        return rewrite_strings(s.encode(), rewrites).decode()

    if attrs is not None:
        placeholders = {o: hash_placeholder(o) for o in drv.outputs}
        files.update(structured_files(attrs, placeholders, inputs, rewrite,
                                       drv_outputs))
        # Nix 2.8 points these at the host's build directory (a bug); later Nix and we: /build
        env["NIX_ATTRS_SH_FILE"] = f"{BUILD_TOP}/.attrs.sh".encode()
        env["NIX_ATTRS_JSON_FILE"] = f"{BUILD_TOP}/.attrs.json".encode()
    else:
        files.update(export_graph_files(drv.env, inputs, drv_outputs))

    env = _environ_entries({rewrite_strings(k.encode(), rewrites).decode():
                            rewrite_strings(v, rewrites) for k, v in env.items()}, drv_path)
    args = [os.path.basename(drv.builder) or drv.builder,
            *(rewrite(a) for a in drv.args)]
    # Nix rejects group/world-writable output roots (registerOutputs, the executor checks
    # them when asked); max-silent-time is a limit (not in the request digest)
    return BuildRequest(
        reject_writable_outputs=True,
        limits=Limits(max_silent_time=settings.max_silent_time or None),
        inputs={os.path.basename(p): info.node for p, info in inputs.items()},
        command_args=(drv.builder, *args[1:]),
        working_dir="build",
        scratch_paths=("build", STORE_SCRATCH),
        inputs_dir=STORE_SCRATCH,
        outputs=tuple(sorted(p.lstrip("/") for p in scratch.values())),
        environment_vars=tuple(EnvVar(k, env[k]) for k in sorted(env, key=str.encode)),
        constraints=_constraints(drv, settings, sandboxed),
        additional_files=tuple(AdditionalFile(f"build/{n}", files[n])
                               for n in sorted(files, key=str.encode)),
        refscan_needles=tuple(sorted({StorePath.from_absolute(p).hash_part
                                      for p in (*inputs, *scratch.values())})),
    )


def _constraints(drv: Derivation, settings: NixSettings, sandboxed: bool) -> Constraints:
    """System, network (fixed-output builds only) and ``sandbox-paths``."""
    from pytest_ocibuild.nix.options import sandbox_binds

    binds, bin_sh = sandbox_binds(settings.sandbox_paths)
    return Constraints(system=drv.system or "x86_64-linux", network_access=not sandboxed,
                       available_ro_paths=binds, provide_bin_sh=bin_sh)


def _environ_entries(env: dict[str, bytes], drv_path: str) -> dict[str, bytes]:
    """Nix passes ``name=value`` strings as they are; a name holding ``=`` gives the same
    entry as the name up to its first ``=`` with the rest prepended to the value. A name
    starting with ``=`` cannot be passed through runc (it refuses empty names)."""
    out: dict[str, bytes] = {}
    for k, v in env.items():
        if "=" in k:
            if k.startswith("="):
                raise NixError(f"{drv_path}: environment variable {k!r} starts with '=', which "
                               "the OCI runtime cannot pass to the builder")
            head, rest = k.split("=", 1)
            k, v = head, rest.encode() + b"=" + v
        if k in out:
            raise NixError(f"{drv_path}: environment variable {k!r} is given twice")
        out[k] = v
    return out


def fixed_output_hash(drv: Derivation) -> tuple[Hash, bool]:
    """``(hash, recursive)`` of a fixed-output derivation's ``out``."""
    from pytest_ocibuild.nix.drv_hash import fixed_output_hash as foh

    return foh(drv.outputs["out"])
