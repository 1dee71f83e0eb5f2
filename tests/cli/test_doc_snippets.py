"""The files the README and docs/ show users writing (YAML cases, test modules using the
plugin's fixtures, a Nix derivation, pytest settings) work as the docs say: each is written,
as it stands in the doc, into a throwaway project that pytest then runs in a fresh store."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import ROOT
from tests.cli.test_docs import DOCS, blocks, example_env

# doc -> the languages of its file snippets, in order; every one is used by a test below
SNIPPETS = {
    "README.md": ["yaml", "python", "yaml"],
    "docs/plugin.md": ["toml", "python", "toml", "yaml"],
    "docs/nix-cases.md": ["yaml", "nix", "yaml", "python"],
    "docs/image.md": ["yaml", "python"],
}
FILE_LANGS = {"yaml", "python", "nix", "toml"}
MINIMAL_INI = "[tool.pytest.ini_options]\n"
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+)", re.M)


def snippet(doc: str, lang: str, index: int = 0) -> str:
    """The ``index``-th ``lang`` block of ``doc``."""
    return blocks(doc, lang)[index].body


def make_project(tmp_path: Path, files: dict[str, str], *, nix: bool = False) -> Path:
    """A project directory holding ``files`` (and a copy of nix/ when the snippets use it)."""
    root = tmp_path / "project"
    for name, text in {"pyproject.toml": MINIMAL_INI, **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    if nix:
        shutil.copytree(ROOT / "nix", root / "nix")
    return root


def run_pytest(root: Path, tmp_path: Path, *args: str) -> tuple[dict[str, str], str]:
    """Run pytest in ``root`` as its user would; returns {item id: outcome} and the output."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-rA", *args],
                         cwd=root, env=example_env(tmp_path), capture_output=True, text=True,
                         timeout=300)
    text = res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "INTERNALERROR" not in text, text
    return {m[2]: m[1] for m in OUTCOME.finditer(res.stdout)}, text


def test_every_snippet_is_run() -> None:
    found = {doc: [b.lang for b in blocks(doc) if b.lang in FILE_LANGS] for doc in DOCS}
    assert {d: langs for d, langs in found.items() if langs} == SNIPPETS


@pytest.mark.runc
@pytest.mark.nix
def test_readme_cases_and_downstream_example(tmp_path: Path) -> None:
    root = make_project(tmp_path, {
        "cases/demo.yaml": snippet("README.md", "yaml", 0),
        "cases/nix.yaml": snippet("README.md", "yaml", 1),
        "tests/test_downstream.py": snippet("README.md", "python"),
    }, nix=True)
    outcomes, text = run_pytest(root, tmp_path, "--snapshot-update")
    assert outcomes == {
        "cases/demo.yaml::directory-output": "PASSED",
        "cases/nix.yaml::deps-multi": "PASSED",
        "cases/nix.yaml::failures-exit3": "PASSED",
        "tests/test_downstream.py::test_greeting_is_built": "PASSED",
        "tests/test_downstream.py::test_a_hanging_build_is_killed": "PASSED",
        "tests/test_downstream.py::test_the_store_is_shared": "PASSED",
    }, text
    assert (root / "cases/__snapshots__/demo/directory-output.json").is_file()


def test_readme_example_is_the_ci_one() -> None:
    ci = (ROOT / "tests/plugin/test_downstream_example.py").read_text()
    assert snippet("README.md", "python") in ci
    assert snippet("docs/plugin.md", "python") == snippet("README.md", "python")


@pytest.mark.runc
@pytest.mark.fuse
def test_plugin_settings_case_and_fixtures(tmp_path: Path) -> None:
    root = make_project(tmp_path, {
        "pyproject.toml": snippet("docs/plugin.md", "toml", 0),
        "cases/demo.yaml": snippet("docs/plugin.md", "yaml"),
        "tests/test_downstream.py": snippet("docs/plugin.md", "python"),
    })
    outcomes, text = run_pytest(root, tmp_path, "--snapshot-update")
    assert outcomes == {
        "cases/demo.yaml::directory-output": "PASSED",
        "tests/test_downstream.py::test_greeting_is_built": "PASSED",
        "tests/test_downstream.py::test_a_hanging_build_is_killed": "PASSED",
        "tests/test_downstream.py::test_the_store_is_shared": "PASSED",
    }, text


def test_plugin_collection_setting(tmp_path: Path) -> None:
    case = snippet("docs/plugin.md", "yaml")
    root = make_project(tmp_path, {
        "pyproject.toml": snippet("docs/plugin.md", "toml", 1),
        "builds/one.yaml": case,
        "tests/deep/two.ocibuild.yaml": case,
        "tests/deep/three.yaml": case,
        "cases/four.yaml": case,
    })
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=root,
                         env=example_env(tmp_path), capture_output=True, text=True, timeout=120)
    ids = {line for line in res.stdout.splitlines() if "::" in line}
    assert ids == {"builds/one.yaml::directory-output",
                   "tests/deep/two.ocibuild.yaml::directory-output"}, res.stdout + res.stderr


@pytest.mark.runc
@pytest.mark.nix
def test_nix_cases_report_and_fixture(tmp_path: Path) -> None:
    doc = "docs/nix-cases.md"
    root = make_project(tmp_path, {
        "cases/doc.yaml": snippet(doc, "yaml", 0),
        "cases/clock.nix": snippet(doc, "nix"),
        "cases/demo.yaml": snippet(doc, "yaml", 1),
        "tests/test_nix_build.py": snippet(doc, "python"),
    }, nix=True)
    outcomes, text = run_pytest(root, tmp_path)
    assert outcomes == {
        "cases/doc.yaml::deps-multi": "PASSED",
        "cases/doc.yaml::failures-exit3": "PASSED",
        "cases/demo.yaml::clock": "FAILED",
        "tests/test_nix_build.py::test_multi_agrees_with_nix": "PASSED",
    }, text
    # the doc's report, but for the UUIDs and hashes
    report = next(b.body for b in blocks(doc, "") if "ours and nix-build disagree" in b.body)
    for line in report.splitlines():
        if not re.search(r"sha256-|[0-9a-f]{8}-[0-9a-f]{4}-", line):
            assert line in text, (line, text)
    assert "./same" not in text


@pytest.mark.runc
@pytest.mark.nix
def test_image_case_and_fixture(tmp_path: Path) -> None:
    root = make_project(tmp_path, {
        "cases/image.yaml": snippet("docs/image.md", "yaml"),
        "tests/test_image.py": snippet("docs/image.md", "python"),
    }, nix=True)
    outcomes, text = run_pytest(root, tmp_path)
    assert outcomes == {"cases/image.yaml::deps-sources-image": "PASSED",
                        "tests/test_image.py::test_hello_image": "PASSED"}, text


@pytest.mark.runc
def test_hello_prints_the_node_the_docs_show(tmp_path: Path) -> None:
    shown = {doc: next(b.body.splitlines()[0] for b in blocks(doc, "")
                       if b.body.startswith("build/out\t")) for doc in ("README.md", "docs/cli.md")}
    res = subprocess.run([str(ROOT / ".venv/bin/ocibuild"), "build", "examples/hello.yaml"],
                         cwd=ROOT, env=example_env(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert set(shown.values()) == {res.stdout.rstrip("\n")}, (shown, res.stdout)
