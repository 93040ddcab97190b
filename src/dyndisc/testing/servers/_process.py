"""Shared plumbing for the real-server managers: ports, temp dirs, spawning, readiness, stopping, logs."""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "ServerBase",
    "ServerUnavailable",
    "free_ports",
    "http_request",
    "poll_until",
    "resolve_binary",
]

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """A test server could not be started; the message says why (binary missing, exited, not ready)."""


def free_ports(count: int = 1, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago.

    All sockets are held open until every port is chosen so the kernel cannot hand out the same port twice.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def resolve_binary(
    name: str, env_var: str, fallbacks: Sequence[Callable[[], Path | None]] = (), hint: str = ""
) -> Path:
    """Find an executable: ``$env_var`` first, then ``name`` on PATH, then each fallback in order.

    Raises :class:`ServerUnavailable` listing everything that was tried.
    """
    tried: list[str] = []
    override = os.environ.get(env_var)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerUnavailable(f"{env_var}={override} is not an executable file")
    tried.append(f"${env_var} (unset)")
    found = shutil.which(name)
    if found:
        return Path(found)
    tried.append(f"{name!r} on PATH")
    for fallback in fallbacks:
        try:
            candidate = fallback()
        except Exception as exc:  # a broken optional package must not hide the real error
            tried.append(f"{getattr(fallback, '__name__', fallback)!s} ({exc})")
            continue
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        tried.append(getattr(fallback, "__doc__", None) or str(fallback))
    raise ServerUnavailable(f"{name} binary not found; tried: {'; '.join(tried)}. {hint}".strip())


def poll_until(
    check: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    max_interval: float = 0.5,
    describe: str = "condition",
) -> None:
    """Call ``check`` until it returns True; raise :class:`TimeoutError` after ``timeout`` seconds.

    The interval backs off so fast servers are seen quickly and slow ones are not hammered.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"{describe} not met within {timeout:.1f}s")
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 1.5, max_interval)


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """Make one HTTP(S) request and return ``(status, body)``; HTTP error statuses are returned, not raised.

    Connection-level failures raise :class:`OSError`.
    """
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, http.client.HTTPException) as exc:
        raise OSError(str(exc)) from exc


# Strong references: a server whose manager was dropped without stop() must still be killed at exit.
_LIVE: set[ManagedProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Servers run in their own session (no Ctrl-C); don't let an aborted test run leave them behind.
    for process in list(_LIVE):
        process.kill()


class ManagedProcess:
    """One server process: spawned with output captured to a log file, polled until ready, stopped.

    The log file is appended to across restarts so a failure report shows the whole history.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool],
        ready_timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.last_probe_error: str | None = None

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn the process and wait until ``ready()`` is true; raise :class:`ServerUnavailable` if not."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Spawn the process without waiting for it to be ready (members of a cluster start together)."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        self._log.write(f"\n===== {self.name}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        env = {**os.environ, **self.env} if self.env is not None else None
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                # Own process group: a Ctrl-C in the test runner must not kill servers mid-teardown.
                start_new_session=True,
            )
        except OSError as exc:
            self._reap()
            raise ServerUnavailable(f"{self.name}: cannot execute {self.argv[0]}: {exc}") from exc
        _LIVE.add(self)

    def _probe(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            return True  # stop polling; wait_ready reports the exit
        try:
            ok = self.ready()
        except Exception as exc:  # not up yet: connection refused, TLS not ready, 5xx...
            self.last_probe_error = f"{type(exc).__name__}: {exc}"
            return False
        return ok

    def wait_ready(self) -> None:
        """Wait until ``ready()`` is true; raise :class:`ServerUnavailable` (killing it) if not."""
        try:
            poll_until(self._probe, self.ready_timeout, describe=f"{self.name} readiness")
        except TimeoutError:
            tail = self.log_tail(40)
            self.kill()
            raise ServerUnavailable(
                f"{self.name} not ready within {self.ready_timeout:.0f}s "
                f"(last probe: {self.last_probe_error or 'not ready'}); log tail:\n{tail}"
            ) from None
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            self._reap()
            raise ServerUnavailable(
                f"{self.name} exited with code {code} during startup; log tail:\n{self.log_tail(40)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to exit (SIGTERM); SIGKILL it if it is still there after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process (a crash: no graceful shutdown) and wait for it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._reap()

    def _reap(self) -> None:
        _LIVE.discard(self)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the captured output (stdout and stderr)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "<no log>"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class ServerBase:
    """Common lifecycle of a server manager: a private temp dir, a process, context-manager use.

    Subclasses build the command line in :meth:`_argv` and the readiness probe in :meth:`_ready`.
    """

    #: Short name used in messages and log section titles.
    kind = "server"

    def __init__(self, *, ready_timeout: float, base_dir: Path | None = None) -> None:
        self.ready_timeout = ready_timeout
        self._owns_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix=f"dyndisc-{self.kind}-")) if base_dir is None else base_dir
        )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.base_dir / f"{self.kind}.log"
        self._process: ManagedProcess | None = None
        self._closed = False

    # -- to override -------------------------------------------------------------------------------
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _after_start(self) -> None:
        """Hook run once the process is ready (e.g. enable auth on first start)."""

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        """The server's process id while running."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Start the server and wait until it serves requests. Idempotent while running."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> Self:
        """Start the process without waiting (the members of a cluster must all run to elect a leader)."""
        if self._closed:
            raise ServerUnavailable(f"{self.kind} was closed; create a new one")
        if self.running:
            return self
        self._process = ManagedProcess(
            self.kind,
            self._argv(),
            log_path=self.log_path,
            ready=self._ready,
            ready_timeout=self.ready_timeout,
            env=self._env(),
            cwd=self.base_dir,
        )
        self._process.spawn()
        return self

    def wait_ready(self) -> Self:
        """Wait until the spawned server serves requests, then run its first-start hook."""
        assert self._process is not None, "spawn() first"
        self._process.wait_ready()
        try:
            self._after_start()
        except Exception:
            self._process.kill()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after ``timeout``). Data and ports are kept for restart."""
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        """Kill with SIGKILL, as in a crash. Data and ports are kept for :meth:`restart`."""
        if self._process is not None:
            self._process.kill()

    def restart(self) -> Self:
        """Stop (if running) and start again on the same data directory and ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir (when this object created it)."""
        self.stop()
        self._closed = True
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the server's output, for error reports."""
        if self._process is not None:
            return self._process.log_tail(lines)
        return "<not started>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
