"""A real kube-apiserver on loopback (no Docker, no kubelet), and optionally the real kube-controller-manager.

Both binaries are built from the published ``k8s.io/kubernetes`` Go module by the wrapper module in
``tools/kubernetes/`` (one ``go.mod``, a package per command under ``cmd/``) and cached per Kubernetes
version under the user cache dir (``$XDG_CACHE_HOME`` or ``~/.cache``)``/dyndisc/<name>-<version>/<name>``.
``$DYNDISC_KUBE_APISERVER_BIN`` and ``$DYNDISC_KUBE_CONTROLLER_MANAGER_BIN`` override all of that.

Build from the command line (what CI does through ``tools/kubernetes/build.sh``)::

    python -m dyndisc.testing.servers kube build     # prints the binaries' paths
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args

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

__all__ = [
    "DEFAULT_CONTROLLERS",
    "KUBE_VERSION",
    "KubeApiServer",
    "KubeCluster",
    "KubeComponent",
    "KubeControllerManager",
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

ADMIN_USER = "dyndisc-admin"
RESTRICTED_USER = "restricted"


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


def _kube_binary(component: KubeComponent, binary: Path | str | None, build: bool) -> Path:
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
    * :attr:`kubeconfig_path` is a kubeconfig for the admin; :meth:`write_kubeconfig` writes others.

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
    ) -> None:
        if etcd is not None and etcd.auth:
            raise ValueError("kube-apiserver cannot log in to an etcd with auth enabled; pass one without")
        self.binary = _kube_binary("kube-apiserver", binary, build)
        super().__init__(ready_timeout=ready_timeout, base_dir=base_dir)
        self._owns_etcd = etcd is None
        self.etcd = etcd if etcd is not None else EtcdServer(base_dir=self.base_dir / "etcd")
        self.etcd_prefix = f"/dyndisc-kube-{secrets.token_hex(4)}"
        self.host = LOOPBACK
        (self.port,) = free_ports(1)
        self.extra_args = list(extra_args)
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
        self.binary = _kube_binary("kube-controller-manager", binary, build)
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
    ) -> None:
        self.crds = list(crds)
        self.apiserver = KubeApiServer(build=build, extra_args=apiserver_args)
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
