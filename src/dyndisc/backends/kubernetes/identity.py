"""Who this worker is on Kubernetes: its pod's name, namespace and uid (and container, in container mode).

Read as the reference runtime reads it: the Downward API files in ``/etc/podinfo`` first, then the
environment. The files come first so that a pod restored from a checkpoint (CRIU) reports itself: its
environment is the one frozen into the checkpoint, with the name and uid of the pod it was taken from,
while the files are mounted fresh for the pod it now runs in.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dyndisc._errors import ConfigurationError
from dyndisc.backends.kubernetes.join import MAIN_CONTAINER, resource_name
from dyndisc.backends.kubernetes.scope import deployment_from_env
from dyndisc.backends.kubernetes.siphash import instance_id_for

log = logging.getLogger("dyndisc.kubernetes")

#: Where the operator mounts the Downward API files (``pod_name``, ``pod_namespace``, ``pod_uid``).
PODINFO_DIR = Path("/etc/podinfo")
#: The variable that selects the discovery mode (the reference runtime's name).
MODE_ENV = "DYN_KUBE_DISCOVERY_MODE"

# A pod name is a DNS-1123 subdomain; the worker's custom resource is named after it.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

_HOW = (
    "inject it with the Downward API (a downwardAPI volume mounted at {dir} with the file {file}, or "
    "env: valueFrom.fieldRef.fieldPath {field})"
)


class DiscoveryMode(StrEnum):
    """``pod``: one worker per pod, readiness from EndpointSlices (the default). ``container``: one worker per
    container (several engines in one pod), readiness from the containers' statuses."""

    POD = "pod"
    CONTAINER = "container"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DiscoveryMode:
        """``DYN_KUBE_DISCOVERY_MODE`` (``pod`` when unset)."""
        value = (os.environ if env is None else env).get(MODE_ENV, "").strip() or cls.POD.value
        try:
            return cls(value)
        except ValueError:
            raise ConfigurationError(
                f"{MODE_ENV}={value!r} is not a Kubernetes discovery mode: use 'pod' (one worker per pod, "
                "the default) or 'container' (one per container, with CONTAINER_NAME set)"
            ) from None


def _read(env: Mapping[str, str], podinfo: Path, var: str, file: str) -> str | None:
    """The content of the Downward API file, else the value of ``var`` in the environment, else ``None``."""
    try:
        text = (podinfo / file).read_text().strip()
    except OSError:
        text = ""
    if text:
        return text
    return env.get(var, "").strip() or None


def namespace_from_env(env: Mapping[str, str] | None = None, podinfo: Path = PODINFO_DIR) -> str | None:
    """``/etc/podinfo/pod_namespace`` (or ``POD_NAMESPACE``), if set."""
    return _read(os.environ if env is None else env, podinfo, "POD_NAMESPACE", "pod_namespace")


@dataclass(frozen=True)
class PodIdentity:
    """The pod a worker runs in, and its container in container mode. Its custom resource is named after the
    pod (or ``{pod}-{container}``, see :attr:`resource_name`) and owned by the pod."""

    name: str
    namespace: str
    uid: str
    #: The container, in container mode (``None``: pod mode, one worker for the whole pod).
    container: str | None = None
    #: The DynamoGraphDeployment of the pod, when the operator says (``DYN_PARENT_DGD_K8S_NAME``): the
    #: worker labels its resource with it, so that watchers scoped to the deployment find it.
    deployment: str | None = None

    def __post_init__(self) -> None:
        if len(self.name) > 253 or not _DNS_SUBDOMAIN.fullmatch(self.name):
            raise ConfigurationError(
                f"pod name {self.name!r} (POD_NAME) is not a valid Kubernetes object name (lower-case "
                "letters, digits, '-' and '.', at most 253 characters)"
            )
        if not self.uid:
            raise ConfigurationError(f"pod {self.name!r} has an empty uid (POD_UID)")
        name = self.resource_name
        if self.container is not None and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
            raise ConfigurationError(
                f"container {self.container!r} (CONTAINER_NAME) of pod {self.name!r} gives the resource name "
                f"{name!r}, which is not a valid Kubernetes object name"
            )

    @property
    def resource_name(self) -> str:
        """The name of the worker's DynamoWorkerMetadata: the pod's, or ``{pod}-{container}`` in container
        mode (the container ``main`` keeps the pod's name)."""
        return resource_name(self.name, self.container)

    @property
    def instance_id(self) -> int:
        """The worker's instance id: the reference runtime's 53-bit hash of :attr:`resource_name`."""
        return instance_id_for(self.resource_name)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        podinfo: Path = PODINFO_DIR,
        default_namespace: str | None = None,
        mode: DiscoveryMode | None = None,
    ) -> PodIdentity:
        """Read the pod's name, uid and namespace from ``/etc/podinfo/{pod_name,pod_uid,pod_namespace}``, each
        falling back to ``POD_NAME`` / ``POD_UID`` / ``POD_NAMESPACE``; in container mode
        (``DYN_KUBE_DISCOVERY_MODE=container``, or ``mode``) the container from ``CONTAINER_NAME``; its
        DynamoGraphDeployment from ``DYN_PARENT_DGD_K8S_NAME`` (or ``/etc/podinfo/labels``).

        A missing name, uid or container is a :class:`~dyndisc.ConfigurationError` that says how to inject
        it; a missing namespace falls back to ``default_namespace`` (the kubeconfig's), then ``default`` with
        a warning.
        """
        env = os.environ if env is None else env
        mode = mode or DiscoveryMode.from_env(env)
        name = _read(env, podinfo, "POD_NAME", "pod_name")
        if name is None:
            raise ConfigurationError(
                "POD_NAME is not set: a Kubernetes worker names its DynamoWorkerMetadata after its pod; "
                + _HOW.format(field="metadata.name", dir=podinfo, file="pod_name")
            )
        uid = _read(env, podinfo, "POD_UID", "pod_uid")
        if uid is None:
            raise ConfigurationError(
                f"POD_UID is not set for pod {name!r}: it is needed so the worker's DynamoWorkerMetadata is "
                "owned by (and garbage-collected with) its pod; "
                + _HOW.format(field="metadata.uid", dir=podinfo, file="pod_uid")
            )
        container = None
        if mode is DiscoveryMode.CONTAINER:
            container = env.get("CONTAINER_NAME", "").strip() or None
            if container is None:
                raise ConfigurationError(
                    f"CONTAINER_NAME is not set for pod {name!r}: {MODE_ENV}=container names each worker "
                    "after its container; set CONTAINER_NAME to the container's name in its env, or use "
                    f"{MODE_ENV}=pod"
                )
        namespace = namespace_from_env(env, podinfo) or default_namespace
        if namespace is None:
            log.warning("POD_NAMESPACE is not set; using namespace 'default' for pod %r", name)
            namespace = "default"
        source = "the Downward API files in" if (podinfo / "pod_name").is_file() else "the environment, not"
        log.info("pod identity of %s/%s read from %s %s", namespace, name, source, podinfo)
        deployment = deployment_from_env(env, podinfo)
        return cls(name=name, namespace=namespace, uid=uid, container=container, deployment=deployment)


__all__ = ["MAIN_CONTAINER", "MODE_ENV", "PODINFO_DIR", "DiscoveryMode", "PodIdentity", "namespace_from_env"]
