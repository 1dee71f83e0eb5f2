"""The ``image:`` case key and the ``ocibuild_image`` fixture, through pytester."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml  # noqa: F401 (one yaml for every in-process run: see tests/plugin/conftest.py)

from tests.image.conftest import APP_OUTPUT, CLOSURE_NIX

needs_all = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("nix-instantiate", "runc")) or os.geteuid() != 0,
    reason="needs Nix, runc and root")
BODY = """\
x-app: &app {file: $NIX, attr: app, bbdir: auto}
app-image:
  nix: *app
  image:
    popularity: {img-shared: 100, busybox-dir: 100}
    cmd: ["@out@/bin/hello"]
    layers: [[img-app, img-liba, img-libb], [img-shared], [busybox-dir]]
    stdout: ["^hello from app: ab shared$"]
app-merged:
  nix: *app
  image:
    max_layers: 1
    run: ["@busybox-dir@/busybox", sh, -c, "echo $0; exit 3", "@img-liba@"]
    layers: 1
    stdout: ["^/nix/store/[0-9a-z]{32}-img-liba$"]
    exit_code: 3
build-image:
  inputs: {busybox: {path: /bin/busybox}}
  command: [/inputs/busybox, sh, -euc, "mkdir out; cp /inputs/busybox out/; echo hi > out/hi"]
  outputs: [build/out]
  image:
    cmd: ["@build/out@/busybox", cat, /build/out/hi]
    layers: [[/build/out]]
    stdout: ["^hi$"]
wrong:
  nix: *app
  image:
    cmd: ["@out@/bin/hello"]
    layers: [[img-app]]
    stdout: ["^goodbye$"]
wrong-output:
  nix: *app
  image:
    run: ["@out@/bin/hello"]
    stdout: ["^goodbye$"]
    exit_code: 1
"""


def write(pytester: pytest.Pytester, body: str) -> Path:
    path = pytester.path / "cases" / "images.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body.replace("$NIX", str(CLOSURE_NIX)))
    return path


def test_bad_image_keys_fail_with_file_and_line(pytester: pytest.Pytester) -> None:
    write(pytester, """\
typo:
  command: [/bin/true]
  image: {layer: 3}
no-command:
  command: [/bin/true]
  image: {stdout: [x]}
failing:
  command: [/bin/false]
  expect: {failure: {reason: exit-code}}
  image: {layers: 1}
too-many:
  command: [/bin/true]
  image: {max_layers: 126}
""")
    result = pytester.runpytest("-rf")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random([
        "*images.yaml:3: case 'typo': image: unknown key(s) layer (expected: *layers*",
        "*images.yaml:6: case 'no-command': image: give cmd or run*",
        "*images.yaml:10: case 'failing': a case that expects a failure has no image*",
        "*images.yaml:13: case 'too-many': image.max_layers: at most 125*",
    ])


@needs_all
def test_image_cases(pytester: pytest.Pytester) -> None:
    write(pytester, BODY)
    result = pytester.runpytest("-rf", "--snapshot-update", "-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines_random([
        "*case 'wrong' (images.yaml:*): 2 problems",
        "*the image's layers differ from the expected ones",
        "- img-app",
        "+ busybox-dir img-app img-liba img-libb img-shared",
        "*case 'wrong-output' (images.yaml:*): 2 problems",
        "*the command in the image exited 0, expected 1",
        "*the command's stdout does not match *goodbye*",
        "hello from app: ab shared",
    ])


@needs_all
def test_ocibuild_image_fixture(pytester: pytest.Pytester, bbdir: Path) -> None:
    pytester.makepyfile(f"""
        def test_export_and_run(ocibuild_image):
            image = ocibuild_image.nix({str(CLOSURE_NIX)!r}, "app",
                                       args={{"bbdir": {str(bbdir)!r}}}, max_layers=2,
                                       popularity={{"busybox-dir": 500}},
                                       cmd=["@out@/bin/hello"])
            assert image.layers == [["img-app", "img-liba", "img-libb", "img-shared"],
                                    ["busybox-dir"]]
            assert (image.layout / "oci-layout").exists()
            ran = image.run()
            assert (ran.exit_code, ran.stdout) == (0, {APP_OUTPUT!r})
            ran = image.run(["@busybox-dir@/busybox", "cat", "@img-liba@/data"])
            assert ran.stdout == "a\\n"
            again = ocibuild_image.nix({str(CLOSURE_NIX)!r}, "app",
                                       args={{"bbdir": {str(bbdir)!r}}}, max_layers=2,
                                       popularity={{"busybox-dir": 500}},
                                       cmd=["@out@/bin/hello"])
            assert (again.manifest, again.made) == (image.manifest, 0)
    """)
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
