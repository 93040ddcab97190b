"""Building a server from its published Go module, once per version: the cache, the lock, the build.

A wrapper module in ``tools/<server>/`` (one ``go.mod``, a package per command under ``cmd/``) is built with
``go build`` (``GOFLAGS=-mod=mod``, no cgo) into ``$XDG_CACHE_HOME/dyndisc/<name>-<version>/<name>``; a
file lock makes parallel processes wait for one build instead of racing, and the binary appears atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dyndisc.testing.servers._process import ServerUnavailable


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/dyndisc`` (``~/.cache/dyndisc`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dyndisc"


def cached_binary_path(name: str, version: str) -> Path:
    """Where the built ``name`` binary of ``version`` lives (it may not exist yet)."""
    return cache_root() / f"{name}-{version}" / name


def find_tool_source(directory: str, env_var: str | None = None) -> Path | None:
    """A wrapper module: ``$env_var`` when set, else ``tools/<directory>`` of the checkout this file is in,
    else the copy an installed wheel carries (``go/<directory>`` beside this file; etcd's only)."""
    override = os.environ.get(env_var) if env_var else None
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "tools" / directory
        if (candidate / "go.mod").is_file():
            return candidate
    packaged = here.parent / "go" / directory
    return packaged if (packaged / "go.mod").is_file() else None


def executable(env_var: str) -> Path | None:
    """The binary ``$env_var`` names, if set (it must be an executable file)."""
    override = os.environ.get(env_var)
    if not override:
        return None
    path = Path(override)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServerUnavailable(f"{env_var}={override} is not an executable file")
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created): parallel test processes or CI steps build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def go_build(
    name: str,
    version: str,
    source: Path,
    *,
    ldflags: str,
    bin_env: str,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """The cached ``name`` of ``version``, built from ``source``'s ``./cmd/<name>`` when missing (or
    ``force``). Raises :class:`ServerUnavailable` with the build's last lines on failure."""
    target = cached_binary_path(name, version)
    if target.is_file() and not force:
        return target
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        raise ServerUnavailable(
            f"building {name} needs the Go toolchain ('go' on PATH), or set {bin_env} to a {name} binary"
        )
    with file_lock(target.parent / ".build.lock"):
        if target.is_file() and not force:
            return target  # another process built it while we waited
        log_path = target.parent / "build.log"
        partial = target.with_name(f".{name}.{os.getpid()}.partial")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        argv = [go, "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), f"./cmd/{name}"]
        started = time.monotonic()
        if verbose:
            print(f"building {name} {version} in {source} (log: {log_path})", file=sys.stderr)
        with open(log_path, "wb") as log:
            code = subprocess.call(argv, cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            partial.unlink(missing_ok=True)
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise ServerUnavailable(
                f"building {name} failed (exit {code}): cd {source} && GOFLAGS=-mod=mod "
                f"{' '.join(argv[1:])}\n{tail}"
            )
        os.replace(partial, target)  # atomic: readers never see a half-written binary
        if verbose:
            print(f"built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return target
