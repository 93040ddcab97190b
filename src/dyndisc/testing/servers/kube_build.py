"""Building (or finding) the kube-apiserver and kube-controller-manager binaries the test servers run.

Both are built from the published ``k8s.io/kubernetes`` Go module by the wrapper module in
``tools/kubernetes/`` (one ``go.mod``, a package per command under ``cmd/``) and cached per Kubernetes
version under the user cache dir (``$XDG_CACHE_HOME`` or ``~/.cache``)``/dyndisc/<name>-<version>/<name>``.
``$DYNDISC_KUBE_APISERVER_BIN`` and ``$DYNDISC_KUBE_CONTROLLER_MANAGER_BIN`` override all of that.

Build from the command line (what CI does through ``tools/kubernetes/build.sh``)::

    python -m dyndisc.testing.servers kube build     # prints the binaries' paths
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from dyndisc.testing.servers._gobuild import (
    cached_binary_path,
    executable,
    find_tool_source,
    go_build,
)
from dyndisc.testing.servers._process import (
    ServerUnavailable,
)

__all__ = [
    "KUBE_VERSION",
    "KubeComponent",
    "build_kube_apiserver",
    "build_kube_binary",
    "build_kube_controller_manager",
    "cached_kube_apiserver_path",
    "cached_kube_binary_path",
    "find_kube_apiserver_source",
    "find_kube_source",
]

#: The Kubernetes release built by ``tools/kubernetes/go.mod`` (a test keeps the two in step).
KUBE_VERSION = "v1.36.3"
#: The commands the wrapper module builds (``tools/kubernetes/cmd/<name>``).
KubeComponent = Literal["kube-apiserver", "kube-controller-manager"]
KUBE_COMPONENTS: tuple[KubeComponent, ...] = get_args(KubeComponent)
#: Environment variables naming a binary to use instead of building one.
KUBE_BIN_ENVS: dict[KubeComponent, str] = {
    "kube-apiserver": "DYNDISC_KUBE_APISERVER_BIN",
    "kube-controller-manager": "DYNDISC_KUBE_CONTROLLER_MANAGER_BIN",
}
KUBE_BIN_ENV = KUBE_BIN_ENVS["kube-apiserver"]
KUBE_SRC_ENV = "DYNDISC_KUBE_SRC"
#: The variable's name before the module built more than kube-apiserver; still honoured.
_OLD_KUBE_SRC_ENV = "DYNDISC_KUBE_APISERVER_SRC"


# -- building -----------------------------------------------------------------------------------------
def cached_kube_binary_path(component: KubeComponent, version: str = KUBE_VERSION) -> Path:
    """Where the built ``component`` binary for ``version`` lives (it may not exist yet)."""
    return cached_binary_path(component, version)


def cached_kube_apiserver_path(version: str = KUBE_VERSION) -> Path:
    """Where the built kube-apiserver for ``version`` lives (it may not exist yet)."""
    return cached_kube_binary_path("kube-apiserver", version)


def find_kube_source() -> Path | None:
    """The wrapper Go module: ``$DYNDISC_KUBE_SRC`` or ``tools/kubernetes`` of a checkout."""
    override = os.environ.get(KUBE_SRC_ENV) or os.environ.get(_OLD_KUBE_SRC_ENV)
    return Path(override) if override else find_tool_source("kubernetes")


#: The same module builds every component (the name is kept for existing callers).
find_kube_apiserver_source = find_kube_source


def source_kube_version(source_dir: Path) -> str:
    """The ``k8s.io/kubernetes`` version required by the wrapper module's go.mod."""
    text = (source_dir / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)", text, re.M)
    if match is None:
        raise ServerUnavailable(f"{source_dir}/go.mod does not require k8s.io/kubernetes")
    return match.group(1)


def _ldflags(version: str) -> str:
    """Strip symbols, and stamp the version the way Kubernetes' own build does (else it says v0.0.0)."""
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return " ".join(["-s", "-w", *(f"-X {pkg}.{name}={value}" for name, value in stamps.items())])


def build_kube_binary(
    component: KubeComponent,
    *,
    source_dir: Path | None = None,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Return a ``component`` binary, building and caching it first when needed.

    Its ``$DYNDISC_..._BIN`` variable wins; otherwise the cached binary for the wrapper module's Kubernetes
    version is reused, or built with ``go build ./cmd/<component>`` (``GOFLAGS=-mod=mod``; the first build
    downloads the modules and compiles for many minutes). Raises :class:`ServerUnavailable` with the reason
    on failure.
    """
    if component not in KUBE_BIN_ENVS:
        raise ValueError(f"unknown Kubernetes component {component!r}; one of {', '.join(KUBE_COMPONENTS)}")
    bin_env = KUBE_BIN_ENVS[component]
    override = executable(bin_env)
    if override is not None:
        return override
    source = source_dir or find_kube_source()
    version = source_kube_version(source) if source is not None else KUBE_VERSION
    target = cached_kube_binary_path(component, version)
    if target.is_file() and not force:
        return target
    if source is None:
        raise ServerUnavailable(
            f"no cached {component} at {target} and no wrapper module to build it: run "
            f"tools/kubernetes/build.sh from a dyndisc checkout, set {KUBE_SRC_ENV} to that directory, "
            f"or set {bin_env}"
        )
    return go_build(
        component, version, source, ldflags=_ldflags(version), bin_env=bin_env, force=force, verbose=verbose
    )


def build_kube_apiserver(
    *, source_dir: Path | None = None, force: bool = False, verbose: bool = False
) -> Path:
    """:func:`build_kube_binary` for kube-apiserver."""
    return build_kube_binary("kube-apiserver", source_dir=source_dir, force=force, verbose=verbose)


def build_kube_controller_manager(
    *, source_dir: Path | None = None, force: bool = False, verbose: bool = False
) -> Path:
    """:func:`build_kube_binary` for kube-controller-manager."""
    return build_kube_binary("kube-controller-manager", source_dir=source_dir, force=force, verbose=verbose)


def resolve_kube_binary(component: KubeComponent, binary: Path | str | None, build: bool) -> Path:
    """``binary`` when given, else a built (``build``) or already cached one."""
    if binary is not None:
        return Path(binary)
    if build:
        return build_kube_binary(component)
    found = os.environ.get(KUBE_BIN_ENVS[component]) or str(cached_kube_binary_path(component))
    if not Path(found).is_file():
        raise ServerUnavailable(f"no {component} binary at {found} (building is disabled)")
    return Path(found)


# -- the server ---------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyndisc.testing.servers kube")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the cached binaries and print their paths")
    path = sub.add_parser("path", help="print where the cached binaries are (or would be)")
    names = " ".join(KUBE_COMPONENTS)
    for command in (build, path):
        # No choices=: argparse (3.11) rejects an empty list against them.
        command.add_argument("components", nargs="*", metavar="NAME", help=f"of {names} (default: all)")
    build.add_argument("--source", type=Path, default=None, help="the wrapper Go module directory")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    unknown = [name for name in args.components if name not in KUBE_COMPONENTS]
    if unknown:
        parser.error(f"unknown component {', '.join(unknown)}; choose from {names}")
    chosen: list[KubeComponent] = args.components or list(KUBE_COMPONENTS)
    for component in chosen:
        if args.command == "path":
            print(cached_kube_binary_path(component))
            continue
        try:
            print(build_kube_binary(component, source_dir=args.source, force=args.force, verbose=True))
        except ServerUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
