"""``ocibuild nix-build`` against the real nix-build, case by case over the corpus in ``nix/``.

For a case that builds: the same drvPath and outputs, and per output the same store path, NAR
hash, NAR size and references; the exported tree is diffed against Nix's output for a readable
failure. For a case marked ``lib.fails``: Nix fails with the expected error (this checks the
corpus), ours fails too, with Nix's reason as its last stderr line, after the log tail.
Our build must leave /nix/store alone; it runs first, so anything it wrote there would be new.

    .venv/bin/pytest tests/nixdiff -n auto            # all cases
    .venv/bin/pytest tests/nixdiff -k 'trees.symlinks'
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from tests.nixdiff.conftest import (
    SRI,
    NixError,
    corpus_cases,
    exported,
    needs_nix_build,
    nix32_to_sri,
    nix_build,
    nix_errors,
    nix_log_tail,
    normalise_reason,
    ocibuild_build,
    our_reason,
    reason_matches,
    store_changes,
    store_listing,
    store_lock,
    tree_diff,
)

CASES = corpus_cases()


# --- the harness itself (no Nix needed) ------------------------------------------------------

def test_corpus_size() -> None:
    assert len(CASES) >= 30
    assert len(set(CASES)) == len(CASES)


def test_nix32_to_sri() -> None:
    # as `nix hash to-sri` prints them (hashes of fixed.rec-sha256 and fixed.flat-sha1)
    sri = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
    assert nix32_to_sri("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw") == sri
    sha1 = "sha1-9XLTlvrpIGYocU+yzgD3LpTyJY8="
    assert nix32_to_sri("sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm") == sha1
    assert nix32_to_sri(sri) == sri


def test_tree_diff_sees_differences(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "same").write_text("x\n")
    (a / "f").write_text("one\ntwo\n")
    (b / "f").write_text("one\nthree\n")
    (a / "x").write_text("")
    (a / "x").chmod(0o755)
    (b / "x").write_text("")
    (a / "l").symlink_to("t1")
    (b / "l").symlink_to("t2")
    (b / "only").mkdir()
    diff = "\n".join(tree_diff(a, b))
    assert "./f: contents differ" in diff and "+two" in diff and "-three" in diff
    assert "./x: executable in ours, file in nix" in diff
    assert "./l: symlink to 't1' in ours, 't2' in nix" in diff
    assert "./'only': only in nix" in diff
    assert tree_diff(a / "same", b / "same") == []


def test_reasons() -> None:
    nix_stderr = (
        "building '/nix/store/aaaa.drv'...\nabout to fail\n"
        "error: builder for '/nix/store/y0iyb7y9hlymva22j3wwm887xibl1vv5-fail-exit3.drv' failed "
        "with exit code 3\n")
    [err] = nix_errors(nix_stderr)
    assert nix_log_tail(nix_stderr) == "about to fail"
    ours = "about to fail\nocibuild: error: " + nix_stderr.splitlines()[-1][7:] + "\n"
    assert reason_matches(our_reason(ours), err, ours)
    assert not reason_matches(our_reason(ours.replace("code 3", "code 31")), err, ours)
    mismatch = NixError("hash mismatch in fixed-output derivation '/nix/store/x.drv':",
                        ["sha256-AAAA=", "sha256-BBBB="])
    line = "hash mismatch in fixed-output derivation '/nix/store/x.drv': specified sha256-AAAA="
    assert not reason_matches(line, mismatch, line)
    assert reason_matches(line, mismatch, line + " got sha256-BBBB=")
    assert normalise_reason(
        "error: builder for '/nix/store/a.drv' failed to produce output path for output 'out' "
        "at '/nix/store/a.drv.chroot/nix/store/b-x'") == \
        "builder for '/nix/store/a.drv' failed to produce output path for output 'out'"
    assert normalise_reason(
        "error: file '/nix/store/3glnvb49f61nskk4xnwx30q40h94kw9s-fail-fifo.drv.chroot/nix/store/"
        "c5lw3x4wim1mmzym888j8j2xvjgwwiv9-fail-fifo/fifo' has an unsupported type") == \
        "file '/nix/store/c5lw3x4wim1mmzym888j8j2xvjgwwiv9-fail-fifo/fifo' has an unsupported type"


# --- the corpus against Nix ------------------------------------------------------------------

@pytest.mark.nix
@needs_nix_build
def test_index_matches_files(index: dict[str, tuple[str | None, str]]) -> None:
    """The cases read from the files are exactly the attributes Nix sees in nix/default.nix."""
    assert sorted(index) == sorted(CASES)


# Differences we know and cannot close with runc 1.1.5 (docs/nix-sandbox.md, "runc limits").
# Strict: a case that starts agreeing fails the run, so this list cannot go stale.
KNOWN_DIFFERENCES = {
    "attrs.odd-env": "runc refuses environment names starting with '=' (we refuse them too)",
    "attrs.odd-environ": "runc refuses environment names starting with '=' (we refuse them too)",
    "sandbox.proc": "runc 1.1.5 needs container 0 mapped (two uid_map lines) and writes "
                    "setgroups 'allow' when run as root",
    "sandbox.dev": "runc mounts /dev/pts and /dev/shm as container root, which runc 1.1.5 "
                   "needs mapped: they show 0:0 where Nix (container root unmapped) shows "
                   "65534:65534",
    "sandbox.mounts": "runc leaves /dev alone only when something is bound at /dev: one "
                      "extra mount line; no /dev/kvm",
}


def _param(case: str) -> object:
    if case in KNOWN_DIFFERENCES:
        return pytest.param(case, marks=pytest.mark.xfail(
            strict=True, reason=KNOWN_DIFFERENCES[case]))
    return case


@pytest.mark.nix
@needs_nix_build
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_vs_nix(case: str, bbdir: Path, index: dict[str, tuple[str | None, str]],
                corpus_prefixes: set[str], tmp_path: Path) -> None:
    with store_lock(exclusive=False):
        before = store_listing()
        ours = ocibuild_build(case, bbdir, tmp_path / "store", tmp_path / "export")
        after = store_listing()
    with store_lock(exclusive=True):
        ref = nix_build(case, bbdir)
    problems = [f"/nix/store changed by ocibuild: {c}"
                for c in store_changes(before, after, corpus_prefixes)]

    error = index[case][0]
    if error is not None:
        errors = nix_errors(ref.stderr)
        assert ref.rc != 0, f"corpus: {case} should fail on Nix but built"
        assert errors and re.fullmatch(error, errors[0].first), \
            f"corpus: Nix failed otherwise than expected ({error!r}):\n{ref.stderr[-3000:]}"
        if ours.rc == 0:
            problems.append(f"ours built it, Nix failed with: {errors[0].first}")
        else:
            reason = our_reason(ours.stderr)
            if not any(reason_matches(reason, e, ours.stderr) for e in errors):
                problems.append(f"reason: ours {reason!r}, nix {[e.first for e in errors]!r}")
            tail = nix_log_tail(ref.stderr)
            if tail is not None and tail not in ours.stderr:
                problems.append(f"log tail {tail!r} missing from our stderr")
        assert not problems, f"{case}:\n" + "\n".join(problems) + \
            f"\n--- our stderr (tail):\n{ours.stderr[-2000:]}"
        return

    assert ref.rc == 0, f"corpus: {case} should build on Nix:\n{ref.stderr[-3000:]}"
    assert ours.rc == 0, f"{case}: ours failed (rc {ours.rc}), Nix built it:\n" \
        f"{ours.stderr[-3000:]}\n" + "\n".join(problems)
    if ours.drv_path != ref.drv_path:
        problems.append(f"drvPath: ours {ours.drv_path}, nix {ref.drv_path}")
    if sorted(ours.outputs) != sorted(ref.outputs):
        problems.append(f"outputs: ours {sorted(ours.outputs)}, nix {sorted(ref.outputs)}")
    for name, n in sorted(ref.outputs.items()):
        o = ours.outputs.get(name)
        if o is None:
            continue
        for what, a, b in (("path", o.path, n.path), ("narHash", o.nar_hash, n.nar_hash),
                           ("narSize", o.nar_size, n.nar_size),
                           ("references", o.references, n.references)):
            if a != b:
                problems.append(f"output {name} {what}: ours {a}, nix {b}")
        if not SRI.match(o.nar_hash):
            problems.append(f"output {name} narHash not SRI: {o.nar_hash}")
        where = exported(tmp_path / "export", name, o.path)
        if where is None:
            problems.append(f"output {name}: not found under --export")
        else:
            problems += [f"output {name} tree: {d}" for d in tree_diff(where, n.path)]
    assert not problems, f"{case}:\n" + "\n".join(problems)


@pytest.mark.nix
@needs_nix_build
def test_fresh_derivation_leaves_nix_store_alone(bbdir: Path, tmp_path: Path) -> None:
    """A derivation no store has seen (a new nonce): ours adds nothing to /nix/store, not even
    the .drv file, and agrees with Nix built afterwards."""
    nonce = ("--argstr", "nonce", secrets.token_hex(8))
    with store_lock(exclusive=False):
        before = store_listing()
        ours = ocibuild_build("graph.trivial", bbdir, tmp_path / "store", tmp_path / "export",
                              *nonce)
        changes = store_changes(before, store_listing(), {"graph-trivial"})
    assert ours.rc == 0, ours.stderr[-3000:]
    assert not changes, f"/nix/store changed by ocibuild: {changes}"
    with store_lock(exclusive=True):
        ref = nix_build("graph.trivial", bbdir, *nonce)
    assert ref.rc == 0, ref.stderr[-3000:]
    assert (ours.drv_path, ours.outputs) == (ref.drv_path, ref.outputs)
