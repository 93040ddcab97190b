"""In-cluster configuration: a process that sees what a pod sees (the service account's token and CA files,
``KUBERNETES_SERVICE_HOST`` / ``_PORT``) connects without a kubeconfig, and picks up a rotated token.

The token is a real ServiceAccount token from the TokenRequest API of the test API server, bound to the
shipped Role; the files are in a temp dir the backend is pointed at (``service_account_dir``) instead of
``/var/run/secrets/kubernetes.io/serviceaccount``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import anyio
import pytest
from kube_helpers import Workers

from dyndisc import AccessDeniedError, ConfigurationError, DistributedRuntime, InstanceQuery
from dyndisc.backends.kubernetes import KubernetesDiscovery
from dyndisc.backends.kubernetes.api import connect, in_cluster
from dyndisc.backends.kubernetes.errors import KubeStatusError
from harnesses.kubernetes import Cluster

ACCOUNT = "dyndisc-discovery"  # the shipped rbac.yaml's ServiceAccount


async def request_token(cluster: Cluster, namespace: str) -> str:
    """A token of the ServiceAccount, as kubelet gets one for a pod (TokenRequest)."""
    reply = await cluster.call(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{ACCOUNT}/token",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    return str(reply["status"]["token"])


@pytest.fixture
async def pod_files(
    cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The service-account files a pod of ``namespace`` would see, and its environment (no kubeconfig)."""
    await cluster.grant_discovery_role(namespace)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(await request_token(cluster, namespace))
    shutil.copy(cluster.server.ca_path, account / "ca.crt")
    (account / "namespace").write_text(namespace)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", cluster.server.host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.server.port))
    return account


async def test_a_pod_connects_with_its_service_account(
    workers: Workers, cluster: Cluster, namespace: str, pod_files: Path
) -> None:
    pod = await workers.pod("worker-0")
    backend = KubernetesDiscovery(identity=pod, service_account_dir=pod_files)
    workers.backends.append(backend)
    api = await backend.api()
    assert api.source == f"the in-cluster service account ({pod_files})"
    assert api.namespace == namespace
    async with DistributedRuntime(backend, lease_ttl=2) as runtime:
        registered = await runtime.endpoint("dyn.c.e").register("tcp://h:1")
        assert await runtime.list() == [registered]
    # No namespace given: the service account's is used.
    watcher = KubernetesDiscovery(service_account_dir=pod_files)
    workers.backends.append(watcher)
    assert await watcher.namespace() == namespace


async def test_a_rotated_token_is_picked_up_after_a_401(
    workers: Workers, cluster: Cluster, namespace: str, pod_files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The pod's token stops being valid (its account was re-created: every token it had is refused; the
    # server caches tokens it accepted for a few seconds, so this one is never used before).
    account = f"/api/v1/namespaces/{namespace}/serviceaccounts/{ACCOUNT}"
    await cluster.call("DELETE", account)
    await cluster.call(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={"metadata": {"name": ACCOUNT}}
    )
    pod = await workers.pod("worker-0")
    backend = KubernetesDiscovery(identity=pod, service_account_dir=pod_files)
    workers.backends.append(backend)
    with pytest.raises(AccessDeniedError, match=r"rejected our credentials \(HTTP 401"):
        await backend.list(InstanceQuery())
    # Kubelet writes the new token into the file; the next request is refused, the file read again, and
    # the request sent once more, with no restart and no wait for the periodic re-read.
    (pod_files / "token").write_text(await request_token(cluster, namespace))
    with caplog.at_level(logging.INFO, "dyndisc.kubernetes"):
        assert await backend.list(InstanceQuery()) == []
    assert "refused our token; retrying with the new one" in caplog.text
    async with DistributedRuntime(backend, lease_ttl=2) as runtime:
        registered = await runtime.endpoint("dyn.c.b").register("tcp://h:2")
        assert await runtime.list() == [registered]


async def test_the_token_is_read_again_every_period(
    cluster: Cluster, namespace: str, pod_files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = in_cluster(pod_files, reread=0.2)
    allowed = cluster.crs_path(namespace)  # what the shipped Role lets the account read
    try:
        assert (await api.request("GET", allowed, what="reading")).get("kind")
        # Kubelet rotates the token ahead of its expiry: the old one still works, yet the new one is used
        # from the next request after the period, with no 401 needed.
        rotated = await request_token(cluster, namespace)
        (pod_files / "token").write_text(rotated)
        await anyio.sleep(0.3)  # the period (0.2 s) has passed
        with caplog.at_level(logging.INFO, "dyndisc.kubernetes"):
            assert (await api.request("GET", allowed, what="reading")).get("kind")
        assert api._client.configuration.api_key["BearerToken"] == f"Bearer {rotated}"
        assert "refused our token" not in caplog.text
        # What the file holds is what is sent.
        (pod_files / "token").write_text("not-a-token")
        await anyio.sleep(0.3)
        with pytest.raises(KubeStatusError) as caught:
            await api.request("GET", allowed, what="reading")
        assert caught.value.status == 401
    finally:
        await api.aclose()


def test_missing_pod_files_are_clear_errors(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigurationError, match=r"service account's CA .*ca\.crt is missing"):
        in_cluster(tmp_path, env)
    (tmp_path / "ca.crt").write_text("x")
    with pytest.raises(ConfigurationError, match=r"cannot read the service-account token .*token"):
        in_cluster(tmp_path, env)
    with pytest.raises(ConfigurationError, match=r"not in a pod \(KUBERNETES_SERVICE_HOST"):
        in_cluster(tmp_path, {})


async def test_without_kubeconfig_or_pod_the_error_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match="set KUBECONFIG"):
        await connect()
