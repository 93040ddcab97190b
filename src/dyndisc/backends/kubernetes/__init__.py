"""The Kubernetes backend: a ``DynamoWorkerMetadata`` resource per worker, readiness from EndpointSlices.

Settings: ``KUBECONFIG`` (or the in-cluster service account), ``/etc/podinfo`` (or ``POD_NAME`` /
``POD_NAMESPACE`` / ``POD_UID``), ``DYN_KUBE_DISCOVERY_MODE``, ``CONTAINER_NAME``, ``DYN_KUBE_LABEL_SELECTOR``
and ``DYN_PARENT_DGD_K8S_NAME``; see ``docs/backends/kubernetes.md``.

The room: ``api`` (a thin JSON client; the only module that imports the Kubernetes client, so importing this
package needs no extra), ``errors``, ``identity`` (who this pod is), ``siphash`` (the reference's instance
ids), ``join`` (slices x worker resources -> instances), ``reflector`` (list-then-watch), ``informer`` (the
reflectors of a namespace and scope, shared by every watch and worker of a backend), ``scope`` (a watcher's
label selector: one deployment), ``worker`` (this pod's resource), ``discovery`` (the
:class:`KubernetesDiscovery`), ``manifests`` (the CRD and RBAC) and ``doctor``.
"""

from __future__ import annotations

from dyndisc._extras import require
from dyndisc.backends.kubernetes.discovery import KubernetesDiscovery
from dyndisc.backends.kubernetes.identity import PodIdentity
from dyndisc.backends.kubernetes.manifests import manifest, manifests
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.backends.kubernetes.worker import FIELD_MANAGER

__all__ = [
    "FIELD_MANAGER",
    "KubernetesDiscovery",
    "PodIdentity",
    "from_env",
    "instance_id_for",
    "manifest",
    "manifests",
]


def from_env(
    *, startup_timeout: float | None = None, startup_timeout_name: str | None = None
) -> KubernetesDiscovery:
    """The backend for ``DYN_DISCOVERY_BACKEND=kubernetes``: credentials from ``KUBECONFIG`` or in-cluster,
    pod identity from ``/etc/podinfo`` (or ``POD_NAME`` / ``POD_NAMESPACE`` / ``POD_UID``).
    ``startup_timeout`` is not used: the API server is asked when first needed. Without the
    ``kubernetes`` extra, :class:`~dyndisc.MissingExtraError` says so now rather than at the first call."""
    require("the 'kubernetes' backend", "kubernetes", "kubernetes_asyncio", "aiohttp", "yaml")
    return KubernetesDiscovery()
