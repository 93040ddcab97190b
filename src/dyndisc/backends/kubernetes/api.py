"""A thin JSON client of the Kubernetes API on top of kubernetes_asyncio's connection and auth handling.

kubernetes_asyncio loads kubeconfigs and owns the HTTP session; this module sends raw requests and reads watch
streams line by line, so the backend works on plain JSON (tolerant of objects it cannot model) and decides
itself how to resume a watch or relist after ``410 Gone``. In a pod it configures itself from what the pod
sees (the service account's token and CA files, ``KUBERNETES_SERVICE_HOST`` / ``_PORT``), re-reading the
token, which kubelet rotates, every minute and whenever the server answers 401.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio import config as kube_config

from dyndisc._errors import AccessDeniedError, BackendUnavailableError, ConfigurationError, DyndiscError
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError, status_error

log = logging.getLogger("dyndisc.kubernetes")

#: Seconds a plain (non-watch) request may take.
REQUEST_TIMEOUT = 30.0
#: Where a pod sees its service account (token, CA certificate, namespace).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Seconds between re-reads of the service-account token (kubelet rotates it; client-go re-reads each minute).
TOKEN_REREAD = 60.0


class ServiceAccountToken:
    """The bearer token of a pod's service account, read from its file again every :data:`TOKEN_REREAD`
    seconds and after a 401, so that a token kubelet rotated is picked up without a restart."""

    def __init__(self, path: Path, configuration: kube_client.Configuration, reread: float = TOKEN_REREAD):
        self.path = path
        self.reread = reread
        self._configuration = configuration
        self._read_at = 0.0
        self.token = ""
        self.reload()

    def reload(self) -> bool:
        """Read the file now; return whether the token changed."""
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the service-account token {self.path}: {exc}; mount the pod's token "
                "(automountServiceAccountToken) or set KUBECONFIG"
            ) from None
        if not token:
            raise ConfigurationError(f"the service-account token file {self.path} is empty")
        self._read_at = time.monotonic()
        changed, self.token = token != self.token, token
        self._configuration.api_key["BearerToken"] = f"Bearer {token}"
        return changed

    def refresh(self, _configuration: Any = None) -> None:
        """Before each request (kubernetes_asyncio's refresh hook): re-read the file when it is due."""
        if time.monotonic() - self._read_at >= self.reread:
            try:
                self.reload()
            except ConfigurationError as exc:  # keep the token we have; the server will say if it is bad
                log.warning("%s", exc)


class KubeApi:
    """Raw JSON requests and watch streams against one API server, with errors that say what to do.

    ``reauthenticate()``, when given, reloads the credentials after a 401 and says whether they changed; the
    request is then sent once more.
    """

    def __init__(
        self,
        api_client: kube_client.ApiClient,
        *,
        source: str,
        namespace: str | None,
        reauthenticate: Callable[[], bool] | None = None,
    ) -> None:
        self._client = api_client
        #: Where the credentials came from (a kubeconfig path, or "in-cluster service account").
        self.source = source
        #: The namespace of the kubeconfig's current context (or of the service account), if any.
        self.namespace = namespace
        self._reauthenticate = reauthenticate
        #: Requests sent (watches included): a diagnostic, and what the fleet benchmark counts.
        self.requests = 0

    def _retry_after_401(self) -> bool:
        if self._reauthenticate is None:
            return False
        try:
            changed = self._reauthenticate()
        except ConfigurationError as exc:
            log.warning("%s", exc)
            return False
        if changed:
            log.info("the API server refused our token; retrying with the new one from %s", self.source)
        return changed

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self._client.configuration.host)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._client.close()

    async def server_date(self) -> str | None:
        """The ``Date`` header of the API server's answer to ``GET /version`` (its clock), if any."""
        try:
            response = await self._client.call_api(
                "/version", "GET", auth_settings=["BearerToken"], _preload_content=False
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable("reading the API server's clock", exc) from exc
        async with response:
            date = response.headers.get("Date")
        return str(date) if date else None

    def _unreachable(self, what: str, exc: BaseException) -> BackendUnavailableError:
        detail = str(exc) or type(exc).__name__
        return BackendUnavailableError(
            f"{what}: the Kubernetes API server at {self.host} is unreachable ({detail}); check that it is "
            f"up and that {self.source} points at it"
        )

    def explain(self, exc: KubeStatusError) -> DyndiscError:
        """Turn an auth or permission failure into an error that names the fix, and a server that cannot
        answer now (429, 5xx) into an outage; others are returned as is."""
        if exc.status == 401:
            return AccessDeniedError(
                f"{exc.what}: the Kubernetes API server at {self.host} rejected our credentials "
                f"(HTTP 401, from {self.source}); the token is missing, wrong or expired"
            )
        if exc.status == 403:
            return AccessDeniedError(
                f"{exc.what}: forbidden by the Kubernetes API server at {self.host} ({exc.message}); "
                f"bind the discovery Role to the identity of {self.source} in that namespace: "
                "dyndisc kube manifests --namespace <namespace> | kubectl apply -f - "
                "(see docs/backends/kubernetes.md)"
            )
        if exc.status == 429 or exc.status >= 500:
            return BackendUnavailableError(f"{exc} (the API server cannot answer now; retrying)")
        return exc

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Mapping[str, str] | None = None,
        body: JsonObject | None = None,
        content_type: str = "application/json",
    ) -> JsonObject:
        """Send one request and return the JSON body; raise :class:`KubeStatusError` on an error status."""
        status, data = await self._send(method, path, what, query, body, content_type)
        if status == 401 and self._retry_after_401():
            status, data = await self._send(method, path, what, query, body, content_type)
        if not 200 <= status < 300:
            raise _status_error(status, data, what)
        try:
            parsed = json.loads(data) if data else {}
        except ValueError as exc:
            raise BackendUnavailableError(f"{what}: {self.host} answered with something not JSON") from exc
        return parsed if isinstance(parsed, dict) else {}

    async def _send(
        self,
        method: str,
        path: str,
        what: str,
        query: Mapping[str, str] | None,
        body: JsonObject | None,
        content_type: str,
    ) -> tuple[int, bytes]:
        self.requests += 1
        try:
            response = await self._client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            async with response:
                answer = response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(what, exc) from exc
        finally:
            # kubernetes_asyncio keeps the last response, body included: a list of the whole namespace would
            # stay in memory until the next request (measured: 1.1 KiB per instance of a 1,000-worker fleet).
            self._client.last_response = None  # type: ignore[attr-defined]
        return answer

    @asynccontextmanager
    async def stream(
        self, path: str, *, what: str, query: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[JsonObject]]:
        """Open a watch stream; yield an iterator of its decoded events (``{"type": ..., "object": ...}``).

        ``read_timeout`` bounds the silence between two lines, so a dead connection is noticed.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        response = await self._open(path, what, query, timeout)
        if response.status == 401 and self._retry_after_401():
            response.close()
            response = await self._open(path, what, query, timeout)
        try:
            if response.status != 200:
                raise _status_error(response.status, await response.read(), what)
            yield self._lines(response, what)
        finally:
            response.close()

    async def _open(
        self, path: str, what: str, query: Mapping[str, str], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        self.requests += 1
        try:
            response: aiohttp.ClientResponse = await self._client.call_api(
                path,
                "GET",
                query_params=list(query.items()),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(what, exc) from exc
        self._client.last_response = None  # type: ignore[attr-defined]  # see _send
        return response

    async def _lines(self, response: aiohttp.ClientResponse, what: str) -> AsyncIterator[JsonObject]:
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise BackendUnavailableError(
                        f"{what}: the watch stream sent a line that is not JSON"
                    ) from None
                if isinstance(event, dict):
                    yield event
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(what, exc) from exc


def _status_error(status: int, data: bytes, what: str) -> KubeStatusError:
    found: JsonObject = {"message": data.decode(errors="replace")[:300]}  # unless the body is a Status
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict):
        found.update(body)
    return status_error(found, what, status)


async def connect(
    kubeconfig: str | os.PathLike[str] | JsonObject | None = None,
    *,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    env: Mapping[str, str] | None = None,
) -> KubeApi:
    """Open a client: the given kubeconfig (path or dict), else ``$KUBECONFIG`` / ``~/.kube/config``, else
    what a pod sees (``KUBERNETES_SERVICE_HOST`` / ``_PORT`` and the service account in
    ``service_account_dir``)."""
    env = os.environ if env is None else env
    configuration = kube_client.Configuration()
    namespace: str | None = None
    try:
        if isinstance(kubeconfig, dict):
            loader = await kube_config.load_kube_config_from_dict(
                kubeconfig, client_configuration=configuration
            )
            source = "the kubeconfig given to the backend"
        else:
            path = str(kubeconfig) if kubeconfig is not None else _default_kubeconfig(env)
            if path is None:
                return in_cluster(service_account_dir, env)
            loader = await kube_config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
            source = f"kubeconfig {path}"
        context = loader.current_context or {}
        found = (context.get("context") or {}).get("namespace")
        namespace = str(found) if found else None
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot load Kubernetes credentials: {exc}; set KUBECONFIG to a kubeconfig file, or run in a "
            "pod with a service account"
        ) from exc
    return KubeApi(kube_client.ApiClient(configuration), source=source, namespace=namespace)


def in_cluster(
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    env: Mapping[str, str] | None = None,
    *,
    reread: float = TOKEN_REREAD,
) -> KubeApi:
    """A client configured as a pod is: the API server at ``KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT``,
    the service account's ``token`` (re-read every ``reread`` seconds and after a 401) and ``ca.crt``."""
    env = os.environ if env is None else env
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host or not port:
        raise ConfigurationError(
            "no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a pod (KUBERNETES_SERVICE_HOST and "
            "KUBERNETES_SERVICE_PORT are not set): set KUBECONFIG to a kubeconfig file"
        )
    ca = service_account_dir / "ca.crt"
    if not ca.is_file() or not ca.stat().st_size:
        raise ConfigurationError(
            f"in a pod (KUBERNETES_SERVICE_HOST={host}) but the service account's CA {ca} is missing or "
            "empty: mount the service-account token (automountServiceAccountToken: true) or set KUBECONFIG"
        )
    configuration = kube_client.Configuration()
    configuration.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    configuration.ssl_ca_cert = str(ca)
    token = ServiceAccountToken(service_account_dir / "token", configuration, reread)
    configuration.refresh_api_key_hook = token.refresh
    ns_file = service_account_dir / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else None
    return KubeApi(
        kube_client.ApiClient(configuration),
        source=f"the in-cluster service account ({service_account_dir})",
        namespace=namespace or None,
        reauthenticate=token.reload,
    )


def _default_kubeconfig(env: Mapping[str, str]) -> str | None:
    """``$KUBECONFIG`` (first entry), else ``~/.kube/config`` if present, else ``None`` inside a pod."""
    found = env.get("KUBECONFIG")
    if found:
        return found.split(os.pathsep)[0]
    home = Path.home() / ".kube" / "config"
    if home.is_file() or not env.get("KUBERNETES_SERVICE_HOST"):
        return str(home)
    return None
