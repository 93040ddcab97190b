"""Label-scoped watches: a watcher that asks for one DynamoGraphDeployment lists and watches only its objects.

On the real API server with the real EndpointSlice controller: two deployments in one namespace, each with
a Service labelled as the operator labels it (the controller copies the labels to the slices) and workers
whose DynamoWorkerMetadata carries the deployment's name. A scoped watcher sees only its deployment, holds
only its deployment's objects, and the API server's audit log shows that its LIST and WATCH requests carried
the selector. The parsing of selectors and of what a worker knows of its deployment needs no server.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kube_helpers import Workers, everything, settle

from dyndisc import ConfigurationError, Instance
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity
from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS, LABEL_SELECTOR
from dyndisc.backends.kubernetes.scope import (
    DEPLOYMENT_LABEL,
    check_selector,
    deployment_from_env,
    deployment_selector,
    selector_from_env,
)
from dyndisc.testing.kubelet import service_manifest
from harnesses.kubernetes import Cluster

NOWHERE = Path("/nope")


# -- without a server ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "selector",
    ["a=b", f"{DEPLOYMENT_LABEL}=my-graph", "env in (a, b),!legacy,tier!=cpu", "x", "k==v", "k="],
)
def test_a_selector_kubernetes_accepts_is_taken(selector: str) -> None:
    assert check_selector(selector) == selector


@pytest.mark.parametrize("selector", ["a=b c", "=b", "a in x", "a/b/c=d", "a b", "a=b,,c=d"])
def test_a_selector_kubernetes_would_refuse_is_a_configuration_error(selector: str) -> None:
    with pytest.raises(ConfigurationError, match="DYN_KUBE_LABEL_SELECTOR"):
        check_selector(selector)
    with pytest.raises(ConfigurationError, match="label_selector of KubernetesDiscovery"):
        KubernetesDiscovery(namespace="ns", label_selector=selector, kubeconfig={})


def test_the_scope_comes_from_the_setting_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert selector_from_env({}) is None
    assert selector_from_env({"DYN_KUBE_LABEL_SELECTOR": " "}) is None
    monkeypatch.setenv("DYN_KUBE_LABEL_SELECTOR", deployment_selector("a"))
    assert KubernetesDiscovery(namespace="ns", kubeconfig={}).label_selector == f"{DEPLOYMENT_LABEL}=a"
    assert KubernetesDiscovery(namespace="ns", kubeconfig={}, label_selector="").label_selector is None
    with pytest.raises(ConfigurationError):
        deployment_selector("not a name")


def test_a_worker_knows_its_deployment_from_the_operator(tmp_path: Path) -> None:
    env = {"POD_NAME": "w-0", "POD_UID": "u", "POD_NAMESPACE": "ns"}
    assert PodIdentity.from_env(env, NOWHERE).deployment is None
    pod = PodIdentity.from_env({**env, "DYN_PARENT_DGD_K8S_NAME": "llama"}, NOWHERE)
    assert pod.deployment == "llama"
    # Or from the pod's own label, through a Downward API labels file.
    (tmp_path / "labels").write_text(f'app="x"\n{DEPLOYMENT_LABEL}="qwen"\n')
    assert deployment_from_env({}, tmp_path) == "qwen"
    assert deployment_from_env({"DYN_PARENT_DGD_K8S_NAME": "llama"}, tmp_path) == "llama"
    assert deployment_from_env({"DYN_PARENT_DGD_K8S_NAME": "not a label"}, NOWHERE) is None


# -- on the API server -----------------------------------------------------------------------------------
async def deployment(
    workers: Workers, cluster: Cluster, namespace: str, graph: str, pods: int
) -> set[Instance]:
    """A deployment ``graph``: its Service (labelled as the operator does), ``pods`` ready pods, and a worker
    on each registering one endpoint of the shared Dynamo namespace ``dyn``."""
    service = service_manifest(f"{graph}-worker", f"{graph}-worker")
    service["metadata"]["labels"] = {**DISCOVERY_LABELS, DEPLOYMENT_LABEL: graph}
    await cluster.call("POST", f"/api/v1/namespaces/{namespace}/services", body=service)
    instances = set()
    for n in range(pods):
        pod = await cluster.run_pod(namespace, f"{graph}-{n}", app=f"{graph}-worker", wait=False)
        await cluster.wait_listed(namespace, pod.name)
        host = await workers.start(dataclasses.replace(pod, deployment=graph))
        instances.add(await host.runtime.endpoint("dyn.backend.generate").register(f"tcp://10.1.0.{n}:9000"))
    return instances


def reads(events: list[dict[str, Any]], namespace: str) -> list[tuple[str, str, dict[str, list[str]]]]:
    """``(verb, resource, query)`` of every list and watch of the namespace's slices and worker resources."""
    found = []
    for event in events:
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or event.get("verb") not in ("list", "watch"):
            continue
        if ref.get("resource") in ("endpointslices", "dynamoworkermetadatas"):
            query = parse_qs(urlsplit(event["requestURI"]).query)
            found.append((event["verb"], ref["resource"], query))
    return found


async def test_a_scoped_watcher_sees_and_holds_only_its_deployment(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    a = await deployment(workers, cluster, namespace, "graph-a", 2)
    b = await deployment(workers, cluster, namespace, "graph-b", 2)
    dwm = await cluster.call("GET", f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas")
    assert {i["metadata"]["name"]: i["metadata"]["labels"][DEPLOYMENT_LABEL] for i in dwm["items"]} == {
        "graph-a-0": "graph-a",
        "graph-a-1": "graph-a",
        "graph-b-0": "graph-b",
        "graph-b-1": "graph-b",
    }

    seen_before = len(cluster.server.audit_events())
    scoped = workers.backend(label_selector=deployment_selector("graph-a"))
    async with scoped.watch(everything()) as events:
        assert await settle(events, set()) == a
        audited = cluster.server.audit_events()[seen_before:]
        # Its reflectors hold graph-a's objects and nothing else.
        held = {r.path.rsplit("/", 1)[1]: set(r.items) for r in scoped.reflectors}
        assert held["dynamoworkermetadatas"] == {"graph-a-0", "graph-a-1"}
        assert held["endpointslices"], "graph-a's slice"
        assert all(name.startswith("graph-a-worker") for name in held["endpointslices"])
        assert set(await scoped.list(everything())) == a  # a list agrees
    unscoped = workers.backend()
    async with unscoped.watch(everything()) as events:
        assert await settle(events, set()) == a | b

    # What the API server was asked by the scoped watcher: every list and watch carried the selector (the
    # workers' own reflectors select their one resource by name).
    mine = [r for r in reads(audited, namespace) if "fieldSelector" not in r[2]]
    assert {(verb, resource) for verb, resource, _ in mine} == {
        ("list", "endpointslices"),
        ("watch", "endpointslices"),
        ("list", "dynamoworkermetadatas"),
        ("watch", "dynamoworkermetadatas"),
    }
    for verb, resource, query in mine:
        scope = deployment_selector("graph-a")
        wanted = f"{LABEL_SELECTOR},{scope}" if resource == "endpointslices" else scope
        assert query.get("labelSelector") == [wanted], (verb, resource, query)
