"""The real kube-controller-manager beside a test :class:`~dyndisc.testing.servers.KubeApiServer` (the
EndpointSlice controller and the garbage collector by default), and :class:`KubeCluster`, the two together."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from dyndisc.testing.servers._process import (
    LOOPBACK,
    ServerBase,
    ServerUnavailable,
    free_ports,
    http_request,
)
from dyndisc.testing.servers._tls import TLSFiles, generate_tls
from dyndisc.testing.servers.kube import ADMIN_USER, KubeApiServer
from dyndisc.testing.servers.kube_build import resolve_kube_binary

__all__ = ["DEFAULT_CONTROLLERS", "KubeCluster", "KubeControllerManager"]


DEFAULT_CONTROLLERS: tuple[str, ...] = ("endpointslice-controller", "garbage-collector-controller")


class KubeControllerManager(ServerBase):
    """The real kube-controller-manager against a :class:`KubeApiServer`, running only ``controllers``.

    It acts as the API server's admin (no per-controller service accounts, so no service-account token
    controller is needed), without leader election, and serves its health checks on a free loopback port
    (:attr:`url`; ``/healthz`` needs no credentials, other paths take the admin token). It is ready once
    ``/healthz?verbose`` reports every requested controller built; their informers sync a moment later.

    Nothing plays kubelet: a test creates the Node, creates Pods with ``spec.nodeName`` set to it, and marks
    them ready by writing their ``status`` (see ``tests/servers/test_kube_controllers.py``). The garbage
    collector notices resource types created after it started (a CRD) only at its next discovery sync,
    every 30 seconds: create CRDs first (:class:`KubeCluster` does).

    Give ``controllers`` their canonical names (``endpointslice-controller``, not the alias
    ``endpointslice``; ``-name`` disables one, ``*`` means the defaults): readiness looks for those names in
    the health report. A controller that declines to start (``serviceaccount-token-controller`` without a
    signing key) never reports, so asking for one makes the start time out with the log saying why.
    """

    kind = "kube-controller-manager"

    def __init__(
        self,
        apiserver: KubeApiServer,
        *,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        binary: Path | str | None = None,
        build: bool = True,
        ready_timeout: float = 120.0,
        base_dir: Path | None = None,
        verbosity: int = 2,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not controllers:
            raise ValueError("name at least one controller to run")
        for name in controllers:
            # Canonical names all end so; an alias would never show up in the health report.
            if name != "*" and not name.endswith("-controller"):
                raise ValueError(
                    f"controller {name!r}: give its canonical name, as the health checks do "
                    "(e.g. 'endpointslice-controller', not 'endpointslice')"
                )
        self.binary = resolve_kube_binary("kube-controller-manager", binary, build)
        super().__init__(ready_timeout=ready_timeout, base_dir=base_dir)
        self.apiserver = apiserver
        self.controllers = tuple(controllers)
        self.verbosity = verbosity
        self.extra_args = list(extra_args)
        self.host = LOOPBACK
        (self.port,) = free_ports(1)
        self.tls: TLSFiles = generate_tls(self.base_dir / "certs", server_names=(LOOPBACK, "localhost"))
        # Its own copy: the controller-manager must not depend on files in the API server's directory.
        self.kubeconfig_path = apiserver.write_kubeconfig(
            apiserver.admin_token, self.base_dir / "kubeconfig", ADMIN_USER
        )

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>``: health checks, metrics, debug handlers."""
        return f"https://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        kubeconfig = str(self.kubeconfig_path)
        return [
            str(self.binary),
            f"--kubeconfig={kubeconfig}",
            # Requests to its own port: bearer tokens are checked with the API server (TokenReview and
            # SubjectAccessReview), /healthz is open to anyone. No client certificates, so no need to
            # look up their CA in kube-system/extension-apiserver-authentication (which the test API
            # server, with no client CA, does not write).
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--authentication-skip-lookup",
            f"--controllers={','.join(self.controllers)}",
            "--leader-elect=false",
            # Every controller uses the kubeconfig's identity (the admin), not a service account each.
            "--use-service-account-credentials=false",
            f"--bind-address={self.host}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.tls.server_cert_path}",
            f"--tls-private-key-file={self.tls.server_key_path}",
            # Tests create objects in bursts; the defaults (20/s, burst 30) would queue the controllers.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            # Write a Service's slices as soon as a pod changes (the default; explicit because it matters).
            "--endpointslice-updates-batch-period=0s",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.extra_args,
        ]

    def health(self, *, timeout: float = 5.0) -> tuple[int, str]:
        """``(status, text)`` of ``/healthz?verbose``: one ``[+]name ok`` line per check."""
        status, body = http_request(
            f"{self.url}/healthz?verbose",
            ssl_context=self.tls.client_ssl_context(with_client_cert=False),
            timeout=timeout,
        )
        return status, body.decode("utf-8", "replace")

    def _ready(self) -> bool:
        status, text = self.health()
        # The per-controller checks appear once the controllers are built, just before they start.
        return status == 200 and all(
            f"[+]{name} ok" in text for name in self.controllers if not name.startswith("-") and name != "*"
        )

    def start(self) -> Self:
        """Start it (the API server must be running) and wait until its controllers are built."""
        if not self.apiserver.running:
            raise ServerUnavailable("start the kube-apiserver before its controller-manager")
        return super().start()


class KubeCluster:
    """A private :class:`KubeApiServer` (own etcd) with a :class:`KubeControllerManager` running against it.

    ``crds`` (manifests, YAML or JSON text) are created and served before the controllers start, so the
    garbage collector watches those resources from its first moment. Use as a context manager, or
    :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        crds: Sequence[str] = (),
        build: bool = True,
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        audit: bool = False,
    ) -> None:
        """``audit`` logs the reads of what discovery reads (:meth:`KubeApiServer.audit_events`)."""
        self.crds = list(crds)
        self.apiserver = KubeApiServer(build=build, extra_args=apiserver_args, audit=audit)
        try:
            self.controller_manager = KubeControllerManager(
                self.apiserver, controllers=controllers, build=build, extra_args=controller_manager_args
            )
        except BaseException:
            self.apiserver.close()
            raise

    def start(self) -> Self:
        """Start the API server, create the CRDs, start the controller-manager."""
        self.apiserver.start()
        for crd in self.crds:
            self.apiserver.create_crd(crd)
        self.controller_manager.start()
        return self

    def close(self) -> None:
        """Stop both (the controller-manager first) and delete their temp dirs."""
        try:
            self.controller_manager.close()
        finally:
            self.apiserver.close()

    def log_tail(self, lines: int = 50) -> str:
        """The last lines of both servers' output."""
        return (
            f"--- kube-apiserver\n{self.apiserver.log_tail(lines)}\n"
            f"--- kube-controller-manager\n{self.controller_manager.log_tail(lines)}"
        )

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
