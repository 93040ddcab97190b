"""A real kube-apiserver on loopback (no Docker, no kubelet), on an etcd of its own; the binary comes from
:mod:`~dyndisc.testing.servers.kube_build`, the controllers beside it from
:mod:`~dyndisc.testing.servers.kube_controllers`."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from dyndisc.testing.servers._process import (
    LOOPBACK,
    ServerBase,
    ServerUnavailable,
    free_ports,
    http_request,
    poll_until,
)
from dyndisc.testing.servers._tls import TLSFiles, generate_tls
from dyndisc.testing.servers.etcd import EtcdServer
from dyndisc.testing.servers.kube_build import resolve_kube_binary

__all__ = ["ADMIN_USER", "RESTRICTED_USER", "KubeApiServer"]

ADMIN_USER = "dyndisc-admin"
RESTRICTED_USER = "restricted"

#: What :attr:`KubeApiServer.audit_path` records when auditing is on: the reads (get, list, watch) of what
#: discovery reads, with their URIs (so a test can check the query a client sent); nothing else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # ResponseStarted stays: a watch is logged when it starts, not only when it ends.
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "verbs": ["get", "list", "watch"],
            "resources": [
                {"group": "discovery.k8s.io", "resources": ["endpointslices"]},
                {"group": "nvidia.com", "resources": ["dynamoworkermetadatas"]},
                {"group": "", "resources": ["pods"]},
            ],
        },
        {"level": "None"},
    ],
}


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "sa.key"
    public = directory / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


class KubeApiServer(ServerBase):
    """A kube-apiserver on 127.0.0.1 with RBAC and static bearer tokens, backed by a real etcd.

    * :attr:`admin_token` belongs to ``dyndisc-admin`` in ``system:masters`` (may do anything);
    * :attr:`restricted_token` belongs to ``restricted`` with no groups besides ``system:authenticated``
      (may do nothing until a Role grants it something);
    * :attr:`kubeconfig_path` is a kubeconfig for the admin; :meth:`write_kubeconfig` writes others;
    * with ``audit``, the reads of EndpointSlices, Pods and DynamoWorkerMetadata are logged
      (:data:`AUDIT_POLICY`), and :meth:`audit_events` returns them: what clients really asked for.

    Without ``etcd`` the server starts and owns a private :class:`EtcdServer`; with one, it shares it under
    a distinct ``--etcd-prefix``. No controller-manager runs unless you start a
    :class:`KubeControllerManager` against it (or use a :class:`KubeCluster`): admission plugins that wait
    for controllers (ServiceAccount) are off, and namespaces must be created explicitly.
    """

    kind = "kube-apiserver"

    def __init__(
        self,
        *,
        etcd: EtcdServer | None = None,
        binary: Path | str | None = None,
        build: bool = True,
        ready_timeout: float = 180.0,
        base_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        audit: bool = False,
    ) -> None:
        if etcd is not None and etcd.auth:
            raise ValueError("kube-apiserver cannot log in to an etcd with auth enabled; pass one without")
        self.binary = resolve_kube_binary("kube-apiserver", binary, build)
        super().__init__(ready_timeout=ready_timeout, base_dir=base_dir)
        self._owns_etcd = etcd is None
        self.etcd = etcd if etcd is not None else EtcdServer(base_dir=self.base_dir / "etcd")
        self.etcd_prefix = f"/dyndisc-kube-{secrets.token_hex(4)}"
        self.host = LOOPBACK
        (self.port,) = free_ports(1)
        self.extra_args = list(extra_args)
        #: Where the audit log is written (with ``audit``), one JSON event per line.
        self.audit_path: Path | None = None
        if audit:
            self.audit_path = self.base_dir / "audit.log"
            policy = self.base_dir / "audit-policy.json"
            policy.write_text(json.dumps(AUDIT_POLICY))
            self.extra_args += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_path}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",  # written before the answer: a test reads it right after
            ]
        self.cert_dir = self.base_dir / "certs"
        self.tls: TLSFiles = generate_tls(
            self.cert_dir,
            server_names=(
                LOOPBACK,
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ),
        )
        self.sa_key_path, self.sa_pub_path = _write_service_account_keys(self.cert_dir)
        self.admin_token = secrets.token_urlsafe(24)
        self.restricted_token = secrets.token_urlsafe(24)
        self.token_file = self.base_dir / "tokens.csv"
        # Format: token,user,uid,"group1,group2"; system:authenticated is added by the server.
        self.token_file.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{self.restricted_token},{RESTRICTED_USER},{RESTRICTED_USER}\n"
        )
        self.token_file.chmod(0o600)
        self.kubeconfig_path = self.write_kubeconfig(
            self.admin_token, self.base_dir / "kubeconfig", ADMIN_USER
        )
        self.restricted_kubeconfig_path = self.write_kubeconfig(
            self.restricted_token, self.base_dir / "kubeconfig-restricted", RESTRICTED_USER
        )

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> str:
        """PEM of the CA that signed the serving certificate."""
        return self.tls.ca_pem

    @property
    def ca_path(self) -> Path:
        """Path of the CA certificate file."""
        return self.tls.ca_path

    def write_kubeconfig(
        self, token: str, path: Path | None = None, user: str = "user", *, server_url: str | None = None
    ) -> Path:
        """Write a kubeconfig that authenticates with ``token``; return its path. ``server_url`` points it
        elsewhere than :attr:`url` (a proxy in front of this server).

        It is written as JSON, which every kubeconfig loader accepts (YAML is a superset).
        """
        target = path or self.base_dir / f"kubeconfig-{user}"
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dyndisc-test",
                    "cluster": {
                        "server": server_url or self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem.encode()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "dyndisc-test", "user": user}}],
            "current-context": user,
        }
        target.write_text(json.dumps(config, indent=2))
        target.chmod(0o600)
        return target

    def _argv(self) -> list[str]:
        argv = [
            str(self.binary),
            f"--advertise-address={self.host}",
            f"--bind-address={self.host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.cert_dir}",
            f"--tls-cert-file={self.tls.server_cert_path}",
            f"--tls-private-key-file={self.tls.server_key_path}",
            f"--etcd-servers={self.etcd.client_url}",
            f"--etcd-prefix={self.etcd_prefix}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={self.sa_pub_path}",
            f"--service-account-signing-key-file={self.sa_key_path}",
            f"--token-auth-file={self.token_file}",
            "--authorization-mode=RBAC",
            # No controller-manager runs, so nothing would create the default ServiceAccount it waits for.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            # No kubelet/scheduler peers to advertise to; keeps etcd traffic down.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]
        if self.etcd.tls is not None:
            argv += [
                f"--etcd-cafile={self.etcd.tls.ca_path}",
                f"--etcd-certfile={self.etcd.tls.cert_path}",
                f"--etcd-keyfile={self.etcd.tls.key_path}",
            ]
        return argv + self.extra_args

    def _ready(self) -> bool:
        status, _ = http_request(
            f"{self.url}/readyz",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            ssl_context=self.tls.client_ssl_context(with_client_cert=False),
            timeout=5,
        )
        return status == 200

    def start(self) -> Self:
        """Start etcd (when owned) and the API server; wait for ``/readyz``."""
        if self._owns_etcd:
            self.etcd.start()
        super().start()
        return self

    def close(self) -> None:
        """Stop the API server, and its private etcd, and delete the temp dir."""
        self.stop()
        if self._owns_etcd:
            self.etcd.close()
        super().close()

    def log_tail(self, lines: int = 50) -> str:
        """The last lines of the API server's output."""
        return super().log_tail(lines)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One synchronous API call as the admin: ``(status, decoded JSON body or None)``.

        For setup code that runs outside an event loop (fixtures, :class:`KubeCluster`); tests use an async
        client. Error statuses are returned, not raised.
        """
        headers = {"Authorization": f"Bearer {self.admin_token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        status, data = http_request(
            f"{self.url}{path}",
            method=method,
            body=body,
            headers=headers,
            ssl_context=self.tls.client_ssl_context(with_client_cert=False),
            timeout=timeout,
        )
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        return status, decoded

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audited request so far (see :data:`AUDIT_POLICY`): ``verb``, ``requestURI`` (with its query),
        ``objectRef``, ``user`` and ``stage`` of each. Raises :class:`RuntimeError` without ``audit``."""
        if self.audit_path is None:
            raise RuntimeError("this KubeApiServer was started without audit=True")
        try:
            lines = self.audit_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        return events

    def create_crd(self, manifest: str, *, timeout: float = 60.0) -> str:
        """Create the CustomResourceDefinition in ``manifest`` (YAML or JSON text, one document) unless it
        exists, and wait until it is served (its ``Established`` condition). Returns its name."""
        status, created = self.request(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            manifest.encode(),
            content_type="application/yaml",  # the API server reads YAML (and so JSON) bodies
        )
        if status == 201 and isinstance(created, dict):
            name = str(created["metadata"]["name"])
        elif status == 409 and isinstance(created, dict):  # a Status naming the existing object
            name = str(created["details"]["name"])
        else:
            raise ServerUnavailable(f"creating a CRD failed with HTTP {status}: {created}")
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"

        def established() -> bool:
            code, crd = self.request("GET", path)
            conditions = ((crd or {}).get("status") or {}).get("conditions") or () if code == 200 else ()
            return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

        try:
            poll_until(established, timeout, describe=f"CRD {name} established")
        except TimeoutError as exc:
            raise ServerUnavailable(str(exc)) from None
        return name


#: What the tests need: EndpointSlices kept for Services (the discovery backend reads them), and
#: ownerReferences honoured (a worker's DynamoWorkerMetadata goes with its pod). Canonical names, as the
#: health checks name them.
