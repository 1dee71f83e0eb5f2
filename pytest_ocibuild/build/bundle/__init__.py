"""OCI bundle directory for a BuildRequest (after tvix's ``oci/bundle.rs``).

Layout of ``bundle_dir``::

    config.json                  the spec (see spec.make_spec)
    inputs/                      empty; the input provider serves the inputs here
    root/                        ``/`` (0750, group 100): etc/{passwd,group,hosts}, tmp/ (1777)
                                 + mount points
    dev/                         ``/dev``: symlinks fd, stdin, stdout, stderr, ptmx + mount points
                                 (or a symlink to a shared copy: see ``make_bundle``)
    scratch/<scratch_name(p)>/   one writable directory per scratch path p
    caches/<name>                symlink to the build's clone of persistent cache <name>

Scratch directories (and additional files) belong to the host ids that the build user
(uid 1000, gid 100 in the container) maps to, as Nix's: the working directory mode 0700; a
scratch path that is the ``inputs_dir`` (Nix's ``/nix/store``) 1775, owned by the caller and
group 100, so the build may add entries but not remove others'; any other scratch path 0755.

Modules: ``layout`` (bundle-relative names, BundleLayout), ``make`` (plan_bundle,
make_bundle), ``root`` (RootSkeleton), ``shell`` (BundleShell), ``dev`` (/dev), ``mounts``
(mount points derived from the spec), ``owners`` (host ids, chown and ACL helpers).
"""

from pytest_ocibuild.build.bundle.dev import DEV_SYMLINKS
from pytest_ocibuild.build.bundle.layout import (
    DEV_SOURCE,
    BundleLayout,
    find_path_in_scratch,
    scratch_name,
)
from pytest_ocibuild.build.bundle.make import BundlePlan, make_bundle, plan_bundle, root_skeleton
from pytest_ocibuild.build.bundle.mounts import MountPoint
from pytest_ocibuild.build.bundle.owners import Owners, build_owner
from pytest_ocibuild.build.bundle.root import (
    ETC_GROUP,
    ETC_HOSTS,
    ETC_NSSWITCH,
    ETC_PASSWD,
    TMP_MODE,
    RootSkeleton,
)
from pytest_ocibuild.build.bundle.shell import BundleShell

__all__ = [
    "DEV_SOURCE", "DEV_SYMLINKS", "ETC_GROUP", "ETC_HOSTS", "ETC_NSSWITCH", "ETC_PASSWD",
    "TMP_MODE", "BundleLayout", "BundlePlan", "BundleShell", "MountPoint", "Owners",
    "RootSkeleton", "build_owner", "find_path_in_scratch", "make_bundle", "plan_bundle",
    "root_skeleton", "scratch_name",
]
