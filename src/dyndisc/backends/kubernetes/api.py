"""A thin JSON client of the Kubernetes API on top of kubernetes_asyncio's connection and auth handling.

kubernetes_asyncio loads kubeconfig / in-cluster credentials and owns the HTTP session; this module sends raw
requests and reads watch streams line by line, so the backend works on plain JSON (tolerant of objects it
cannot model) and decides itself how to resume a watch or relist after ``410 Gone``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio import config as kube_config

from dyndisc._errors import AccessDeniedError, BackendUnavailableError, ConfigurationError, DyndiscError
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError

#: Seconds a plain (non-watch) request may take.
REQUEST_TIMEOUT = 30.0


class KubeApi:
    """Raw JSON requests and watch streams against one API server, with errors that say what to do."""

    def __init__(self, api_client: kube_client.ApiClient, *, source: str, namespace: str | None) -> None:
        self._client = api_client
        #: Where the credentials came from (a kubeconfig path, or "in-cluster service account").
        self.source = source
        #: The namespace of the kubeconfig's current context (or of the service account), if any.
        self.namespace = namespace

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
                data = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(what, exc) from exc
        if not 200 <= status < 300:
            raise _status_error(status, data, what)
        try:
            parsed = json.loads(data) if data else {}
        except ValueError as exc:
            raise BackendUnavailableError(f"{what}: {self.host} answered with something not JSON") from exc
        return parsed if isinstance(parsed, dict) else {}

    @asynccontextmanager
    async def stream(
        self, path: str, *, what: str, query: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[JsonObject]]:
        """Open a watch stream; yield an iterator of its decoded events (``{"type": ..., "object": ...}``).

        ``read_timeout`` bounds the silence between two lines, so a dead connection is noticed.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        try:
            response = await self._client.call_api(
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
        try:
            if response.status != 200:
                raise _status_error(response.status, await response.read(), what)
            yield self._lines(response, what)
        finally:
            response.close()

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
    reason, message = "", data.decode(errors="replace")[:300]
    try:
        body = json.loads(data)
        if isinstance(body, dict):
            reason, message = str(body.get("reason", "")), str(body.get("message", message))
    except ValueError:
        pass
    return KubeStatusError(status, reason, message, what)


_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


async def connect(kubeconfig: str | os.PathLike[str] | JsonObject | None = None) -> KubeApi:
    """Open a client: the given kubeconfig (path or dict), else ``$KUBECONFIG`` / ``~/.kube/config``,
    else the in-cluster service account."""
    configuration = kube_client.Configuration()
    namespace: str | None = None
    try:
        if isinstance(kubeconfig, dict):
            loader = await kube_config.load_kube_config_from_dict(
                kubeconfig, client_configuration=configuration
            )
            source = "the kubeconfig given to the backend"
        else:
            path = str(kubeconfig) if kubeconfig is not None else _default_kubeconfig()
            if path is None:
                kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                ns_file = _SA_DIR / "namespace"
                namespace = ns_file.read_text().strip() if ns_file.is_file() else None
                return KubeApi(
                    kube_client.ApiClient(configuration),
                    source="the in-cluster service account",
                    namespace=namespace,
                )
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


def _default_kubeconfig() -> str | None:
    """``$KUBECONFIG`` (first entry), else ``~/.kube/config`` if present, else ``None`` inside a pod."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return env.split(os.pathsep)[0]
    home = Path.home() / ".kube" / "config"
    if home.is_file() or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return str(home)
    return None
