"""``dyndisc doctor`` against the real kube-apiserver: it finds a missing CRD and missing RBAC rights, each
with its fix, and passes a namespace set up as documented."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from dyndisc.backends.diagnosis import Report, Status
from dyndisc.backends.kubernetes import KubernetesDiscovery
from dyndisc.backends.kubernetes.doctor import required_rights
from dyndisc.cli import main
from dyndisc.cli.doctor import run_doctor
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer, KubeApiServer
from dyndisc.testing.servers.kube import RESTRICTED_USER
from harnesses.kubernetes import Cluster, kubeconfig


@pytest.fixture
async def doctor() -> AsyncIterator[Any]:
    """Run the doctor on a KubernetesDiscovery made from ``kwargs``; close it afterwards."""
    made: list[KubernetesDiscovery] = []

    async def run(**kwargs: Any) -> Report:
        backend = KubernetesDiscovery(**kwargs)
        made.append(backend)
        report = await run_doctor(backend, ttl=2, timeout=15)
        print(report.render())
        return report

    try:
        yield run
    finally:
        for backend in made:
            await backend.aclose()


def status(report: Report, name: str) -> Status | None:
    found = report.find(name)
    return found.status if found else None


async def test_a_namespace_set_up_as_documented_passes(cluster: Cluster, namespace: str, doctor: Any) -> None:
    await cluster.grant_discovery_role(namespace)
    report = await doctor(
        namespace=namespace, kubeconfig=kubeconfig(cluster.server, cluster.server.restricted_token)
    )
    assert report.ok, report.render()
    assert status(report, "credentials") is Status.OK
    assert RESTRICTED_USER in report.render()
    assert status(report, "CRD") is Status.OK
    assert status(report, "RBAC") is Status.OK
    assert status(report, "connectivity") is Status.OK
    # Not a worker pod: no lease to check, but the watch is.
    assert status(report, "lease round trip") is Status.SKIP
    assert status(report, "watch round trip") is Status.OK


async def test_a_worker_pod_gets_lease_and_watch_round_trips(
    cluster: Cluster, namespace: str, doctor: Any
) -> None:
    pod = await cluster.ready_pod(namespace, "doctor-worker")
    report = await doctor(
        namespace=namespace, identity=pod, kubeconfig=kubeconfig(cluster.server, cluster.server.admin_token)
    )
    assert report.ok, report.render()
    assert status(report, "lease round trip") is Status.OK
    watch = report.find("watch round trip")
    assert watch is not None
    assert "a registration arrived in" in watch.detail


async def test_missing_rbac_rights_are_listed_with_the_fix(
    cluster: Cluster, namespace: str, doctor: Any
) -> None:
    report = await doctor(
        namespace=namespace, kubeconfig=kubeconfig(cluster.server, cluster.server.restricted_token)
    )
    assert not report.ok
    rbac = report.find("RBAC")
    assert rbac is not None
    assert rbac.status is Status.FAIL
    assert f"{RESTRICTED_USER!r} may not, in namespace {namespace!r}" in rbac.detail
    for verb, resource in [
        ("list", "pods"),
        ("watch", "endpointslices.discovery.k8s.io"),
        ("patch", "dynamoworkermetadatas.nvidia.com"),
    ]:
        assert f"{verb} {resource}" in rbac.detail
    assert rbac.fix is not None
    assert f"dyndisc kube manifests --only rbac --namespace {namespace} | kubectl apply -f -" in rbac.fix
    # The checks that would only fail the same way are not run.
    assert report.find("connectivity") is None


async def test_one_missing_right_is_named_alone(cluster: Cluster, namespace: str, doctor: Any) -> None:
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
        # Everything but delete: a worker could register but never clean up.
        {
            "apiGroups": ["nvidia.com"],
            "resources": ["dynamoworkermetadatas"],
            "verbs": ["get", "list", "watch", "create", "update", "patch"],
        },
    ]
    await cluster.call(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        body={"metadata": {"name": "partial"}, "rules": rules},
    )
    await cluster.bind_to_restricted_user(namespace, "partial", "partial")
    report = await doctor(
        namespace=namespace, kubeconfig=kubeconfig(cluster.server, cluster.server.restricted_token)
    )
    rbac = report.find("RBAC")
    assert rbac is not None
    assert rbac.status is Status.FAIL
    assert rbac.detail.endswith(": delete dynamoworkermetadatas.nvidia.com"), rbac.detail


def test_the_rights_checked_are_the_shipped_roles() -> None:
    rights = required_rights()
    assert ("nvidia.com", "dynamoworkermetadatas", "patch") in rights
    assert ("", "pods", "watch") in rights
    assert len(rights) == 13


async def test_the_cli_finds_missing_rbac_from_the_environment(
    cluster: Cluster, namespace: str, tmp_path: Any
) -> None:
    path = cluster.server.write_kubeconfig(cluster.server.restricted_token, tmp_path / "kubeconfig")
    env = {"KUBECONFIG": str(path), "POD_NAMESPACE": namespace, "POD_NAME": ""}
    invoke = functools.partial(
        CliRunner().invoke, main, ["doctor", "--backend", "k8s", "--timeout", "15"], env=env
    )
    result = await anyio.to_thread.run_sync(invoke)
    assert result.exit_code == 1, result.output
    assert "[FAIL] RBAC:" in result.output
    assert f"fix: dyndisc kube manifests --only rbac --namespace {namespace}" in result.output


@pytest.fixture
def bare_apiserver(
    dyndisc_private_servers: PrivateServers, dyndisc_kube_apiserver: KubeApiServer
) -> KubeApiServer:
    """A second kube-apiserver, on the session's etcd under its own prefix: no CRD installed."""
    etcd: EtcdServer = dyndisc_kube_apiserver.etcd
    return dyndisc_private_servers(KubeApiServer, etcd=etcd)


async def test_a_missing_crd_is_found_with_its_fix(bare_apiserver: KubeApiServer, doctor: Any) -> None:
    report = await doctor(
        namespace="default", kubeconfig=kubeconfig(bare_apiserver, bare_apiserver.admin_token)
    )
    crd = report.find("CRD")
    assert crd is not None
    assert crd.status is Status.FAIL, report.render()
    assert "the DynamoWorkerMetadata CRD (dynamoworkermetadatas.nvidia.com) is not installed" in crd.detail
    assert crd.fix is not None
    assert "dyndisc kube manifests --only crd | kubectl apply -f -" in crd.fix
    assert not report.ok
