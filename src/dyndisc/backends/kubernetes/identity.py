"""Who this worker is on Kubernetes: its pod's name, namespace and uid (from the Downward API)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dyndisc._errors import ConfigurationError
from dyndisc.backends.kubernetes.siphash import instance_id_for

log = logging.getLogger("dyndisc.kubernetes")

#: Where the operator mounts the Downward API files (``pod_name``, ``pod_namespace``, ``pod_uid``).
PODINFO_DIR = Path("/etc/podinfo")

# A pod name is a DNS-1123 subdomain; the worker's custom resource is named after it.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

_HOW = (
    "inject it with the Downward API (env: valueFrom.fieldRef.fieldPath {field}, or a downwardAPI volume "
    "mounted at {dir})"
)


def _read(env: Mapping[str, str], podinfo: Path, var: str, file: str) -> str | None:
    """The value of ``var`` in the environment, else of the Downward API file, else ``None``."""
    value = env.get(var, "").strip()
    if value:
        return value
    path = podinfo / file
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def namespace_from_env(env: Mapping[str, str] | None = None, podinfo: Path = PODINFO_DIR) -> str | None:
    """``POD_NAMESPACE`` (or ``/etc/podinfo/pod_namespace``), if set."""
    return _read(os.environ if env is None else env, podinfo, "POD_NAMESPACE", "pod_namespace")


@dataclass(frozen=True)
class PodIdentity:
    """The pod a worker runs in. Its custom resource is named after the pod and owned by it."""

    name: str
    namespace: str
    uid: str

    def __post_init__(self) -> None:
        if len(self.name) > 253 or not _DNS_SUBDOMAIN.fullmatch(self.name):
            raise ConfigurationError(
                f"pod name {self.name!r} (POD_NAME) is not a valid Kubernetes object name (lower-case "
                "letters, digits, '-' and '.', at most 253 characters)"
            )
        if not self.uid:
            raise ConfigurationError(f"pod {self.name!r} has an empty uid (POD_UID)")

    @property
    def instance_id(self) -> int:
        """The worker's instance id: the reference runtime's 53-bit hash of the pod name."""
        return instance_id_for(self.name)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        podinfo: Path = PODINFO_DIR,
        default_namespace: str | None = None,
    ) -> PodIdentity:
        """Read ``POD_NAME``, ``POD_NAMESPACE``, ``POD_UID`` (environment first, then ``/etc/podinfo/*``).

        A missing name or uid is a :class:`~dyndisc.ConfigurationError` that says how to inject it; a missing
        namespace falls back to ``default_namespace`` (the kubeconfig's), then ``default`` with a warning.
        """
        env = os.environ if env is None else env
        name = _read(env, podinfo, "POD_NAME", "pod_name")
        if name is None:
            raise ConfigurationError(
                "POD_NAME is not set: a Kubernetes worker names its DynamoWorkerMetadata after its pod; "
                + _HOW.format(field="metadata.name", dir=podinfo)
            )
        uid = _read(env, podinfo, "POD_UID", "pod_uid")
        if uid is None:
            raise ConfigurationError(
                f"POD_UID is not set for pod {name!r}: it is needed so the worker's DynamoWorkerMetadata is "
                "owned by (and garbage-collected with) its pod; "
                + _HOW.format(field="metadata.uid", dir=podinfo)
            )
        namespace = namespace_from_env(env, podinfo) or default_namespace
        if namespace is None:
            log.warning("POD_NAMESPACE is not set; using namespace 'default' for pod %r", name)
            namespace = "default"
        return cls(name=name, namespace=namespace, uid=uid)
