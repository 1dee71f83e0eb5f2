"""RuncRuntime: ``runc run --detach`` under the reaper, ``runc delete`` (or the reaper by
hand, from ``state.json``) afterwards. The default backend."""

from __future__ import annotations

from pytest_ocibuild.build.runtime.oci import OciRuntime


class RuncRuntime(OciRuntime):
    """runc (1.1.5 on Debian 12)."""

    name = "runc"
    install_hint = "apt-get install runc"
