"""Smoke tests: a real kube-apiserver: a CRD, an EndpointSlice and its watch, RBAC for a restricted token."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import KubeApiServer, ServerUnavailable
from dyndisc.testing.servers.kube_build import KUBE_VERSION, find_kube_apiserver_source, source_kube_version

GROUP, VERSION, PLURAL = "nvidia.com", "v1alpha1", "dynamoworkermetadatas"
TIMEOUT = 30.0


def _obj(body: dict[str, Any]) -> Any:
    """The client accepts plain dicts as bodies; its generated signatures only name the model classes."""
    return body


CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "dynamoworkermetadata",
            "kind": "DynamoWorkerMetadata",
            "listKind": "DynamoWorkerMetadataList",
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "data": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


async def _api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration=configuration)


@pytest.fixture
async def admin(dyndisc_kube_apiserver: KubeApiServer) -> AsyncIterator[client.ApiClient]:
    api = await _api_client(dyndisc_kube_apiserver.kubeconfig_path)
    async with api:
        yield api


async def _namespace(api: client.ApiClient) -> str:
    name = f"smoke-{secrets.token_hex(3)}"
    await client.CoreV1Api(api).create_namespace(_obj({"metadata": {"name": name}}))
    return name


async def _wait_established(api: client.ApiClient, name: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        crd = await ext.read_custom_resource_definition(name)
        conditions = crd.status.conditions or [] if crd.status else []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        assert asyncio.get_running_loop().time() < deadline, f"CRD {name} not established"
        await asyncio.sleep(0.1)


def test_wrapper_module_matches_python_pin() -> None:
    source = find_kube_apiserver_source()
    assert source is not None
    assert source_kube_version(source) == KUBE_VERSION
    staging = re.findall(r"^\s*(k8s\.io/\S+) => (k8s\.io/\S+) (v\S+)$", (source / "go.mod").read_text(), re.M)
    assert staging, "the staging modules must be pinned with replace lines"
    expected = "v0." + KUBE_VERSION.split(".", 1)[1]
    assert {version for _, _, version in staging} == {expected}


@pytest.mark.asyncio
async def test_version_and_urls(dyndisc_kube_apiserver: KubeApiServer, admin: client.ApiClient) -> None:
    assert dyndisc_kube_apiserver.url.startswith("https://127.0.0.1:")
    assert "BEGIN CERTIFICATE" in dyndisc_kube_apiserver.ca_pem
    info = await client.VersionApi(admin).get_code()
    assert info.git_version == KUBE_VERSION


@pytest.mark.asyncio
async def test_crd_and_endpointslice_with_watch(admin: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(admin)
    try:
        await ext.create_custom_resource_definition(_obj(CRD))
    except ApiException as exc:
        if exc.status != 409:  # the session server may already have it
            raise
    await _wait_established(admin, f"{PLURAL}.{GROUP}")
    ns = await _namespace(admin)

    custom = client.CustomObjectsApi(admin)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DynamoWorkerMetadata",
        "metadata": {"name": "worker-1"},
        "spec": {"data": {"endpoints": {"generate": {"port": 9000}}, "anything": [1, "two"]}},
    }
    await custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    got = await custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "worker-1")
    assert got["spec"]["data"]["anything"] == [1, "two"]  # unknown fields preserved

    discovery = client.DiscoveryV1Api(admin)
    listed = await discovery.list_namespaced_endpoint_slice(ns)
    watcher = watch.Watch()
    events: list[tuple[str, str]] = []

    async def collect() -> None:
        async for event in watcher.stream(
            discovery.list_namespaced_endpoint_slice,
            ns,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=int(TIMEOUT),
        ):
            events.append((event["type"], event["object"].metadata.name))
            if event["type"] == "ADDED":
                watcher.stop()

    task = asyncio.create_task(collect())
    await discovery.create_namespaced_endpoint_slice(
        ns,
        _obj(
            {
                "metadata": {"name": "worker-1", "labels": {"kubernetes.io/service-name": "workers"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}],
                "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}],
            }
        ),
    )
    await asyncio.wait_for(task, TIMEOUT)
    await watcher.close()
    assert events == [("ADDED", "worker-1")]


@pytest.mark.asyncio
async def test_restricted_token_is_limited_by_rbac(
    dyndisc_kube_apiserver: KubeApiServer, admin: client.ApiClient
) -> None:
    allowed, other = await _namespace(admin), await _namespace(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    await rbac.create_namespaced_role(
        allowed,
        _obj(
            {
                "metadata": {"name": "read-slices"},
                "rules": [
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["get", "list"],
                    }
                ],
            }
        ),
    )
    await rbac.create_namespaced_role_binding(
        allowed,
        _obj(
            {
                "metadata": {"name": "read-slices"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-slices"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "restricted"}],
            }
        ),
    )
    restricted = await _api_client(dyndisc_kube_apiserver.restricted_kubeconfig_path)
    async with restricted:
        slices = client.DiscoveryV1Api(restricted)
        # RBAC caches may lag the binding by a moment: poll, with a deadline.
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            try:
                await slices.list_namespaced_endpoint_slice(allowed)
                break
            except ApiException as exc:
                assert exc.status == 403
                assert asyncio.get_running_loop().time() < deadline, "the RoleBinding never took effect"
                await asyncio.sleep(0.1)
        with pytest.raises(ApiException) as denied:
            await slices.list_namespaced_endpoint_slice(other)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied_write:
            await slices.create_namespaced_endpoint_slice(
                allowed, _obj({"metadata": {"name": "nope"}, "addressType": "IPv4", "endpoints": []})
            )
        assert denied_write.value.status == 403


@pytest.mark.asyncio
async def test_restart_keeps_objects() -> None:
    try:
        server = KubeApiServer(build=False).start()
    except ServerUnavailable as exc:
        server_unavailable(str(exc))
    try:
        api = await _api_client(server.kubeconfig_path)
        async with api:
            ns = await _namespace(api)
        server.restart()
        api = await _api_client(server.kubeconfig_path)
        async with api:
            got = await client.CoreV1Api(api).read_namespace(ns)
        assert got.metadata.name == ns
    finally:
        server.close()
