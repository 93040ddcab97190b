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
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, get_args

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
def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dyndisc"


def cached_kube_binary_path(component: KubeComponent, version: str = KUBE_VERSION) -> Path:
    """Where the built ``component`` binary for ``version`` lives (it may not exist yet)."""
    return _cache_root() / f"{component}-{version}" / component


def cached_kube_apiserver_path(version: str = KUBE_VERSION) -> Path:
    """Where the built kube-apiserver for ``version`` lives (it may not exist yet)."""
    return cached_kube_binary_path("kube-apiserver", version)


def find_kube_source() -> Path | None:
    """The wrapper Go module: ``$DYNDISC_KUBE_SRC`` or ``tools/kubernetes`` of a checkout."""
    override = os.environ.get(KUBE_SRC_ENV) or os.environ.get(_OLD_KUBE_SRC_ENV)
    if override:
        return Path(override)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tools" / "kubernetes"
        if (candidate / "go.mod").is_file():
            return candidate
    return None


#: The same module builds every component (the name is kept for existing callers).
find_kube_apiserver_source = find_kube_source


def source_kube_version(source_dir: Path) -> str:
    """The ``k8s.io/kubernetes`` version required by the wrapper module's go.mod."""
    text = (source_dir / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)", text, re.M)
    if match is None:
        raise ServerUnavailable(f"{source_dir}/go.mod does not require k8s.io/kubernetes")
    return match.group(1)


def _go_binary(component: KubeComponent) -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if found is None:
        raise ServerUnavailable(
            f"building {component} needs the Go toolchain ('go' on PATH), or set "
            f"{KUBE_BIN_ENVS[component]} to a {component} binary"
        )
    return found


def _ldflags(version: str) -> str:
    """Strip symbols, and stamp the version the way Kubernetes' own build does (else it says v0.0.0)."""
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return " ".join(["-s", "-w", *(f"-X {pkg}.{name}={value}" for name, value in stamps.items())])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Parallel test processes (xdist) or CI steps must not build the same binary twice at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    override = os.environ.get(bin_env)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerUnavailable(f"{bin_env}={override} is not an executable file")
        return path
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
    go = _go_binary(component)
    with _file_lock(target.parent / ".build.lock"):
        if target.is_file() and not force:
            return target  # another process built it while we waited
        log_path = target.parent / "build.log"
        partial = target.with_name(f".{component}.{os.getpid()}.partial")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        package = f"./cmd/{component}"
        argv = [go, "build", "-trimpath", f"-ldflags={_ldflags(version)}", "-o", str(partial), package]
        started = time.monotonic()
        if verbose:
            print(f"building {component} {version} in {source} (log: {log_path})", file=sys.stderr)
        with open(log_path, "wb") as log:
            code = subprocess.call(argv, cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            partial.unlink(missing_ok=True)
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise ServerUnavailable(
                f"building {component} failed (exit {code}): cd {source} && GOFLAGS=-mod=mod "
                f"{' '.join(argv[1:])}\n{tail}"
            )
        os.replace(partial, target)  # atomic: readers never see a half-written binary
        if verbose:
            print(f"built {component} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return target


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
