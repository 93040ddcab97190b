"""What a Kubernetes watcher is scoped to: a label selector that narrows its reflectors to one deployment.

Without a scope a watcher lists and watches every discovery EndpointSlice and every DynamoWorkerMetadata of
its namespace, and holds them all, even when it asks for one deployment's endpoints. With one
(``DYN_KUBE_LABEL_SELECTOR``, or ``KubernetesDiscovery(label_selector=...)``), both reflectors send it as
``labelSelector``: the API server lists, watches and sends only the objects that match.

The usual scope is one DynamoGraphDeployment: the Dynamo operator labels the pods, the Services (whose labels
the EndpointSlice controller copies to their slices) and the component resources of a graph with
:data:`DEPLOYMENT_LABEL`, and gives every component container the graph's name in :data:`DEPLOYMENT_ENV`.
A worker labels its own DynamoWorkerMetadata with that name (:func:`deployment_from_env`), so a watcher
scoped with :func:`deployment_selector` finds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from dyndisc._errors import ConfigurationError

#: The label the Dynamo operator puts on everything of one DynamoGraphDeployment (its name is the value).
DEPLOYMENT_LABEL = "nvidia.com/dynamo-graph-deployment-name"
#: The variable the operator sets in every component container: the name of its DynamoGraphDeployment.
DEPLOYMENT_ENV = "DYN_PARENT_DGD_K8S_NAME"
#: The variable that scopes a watcher's reflectors (a Kubernetes label selector).
SELECTOR_ENV = "DYN_KUBE_LABEL_SELECTOR"
#: The Downward API file of the pod's labels (``metadata.labels``), when mounted.
LABELS_FILE = "labels"

# A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"({_NAME})?"
_REQUIREMENT = re.compile(
    rf"\s*(?:!?\s*{_KEY}"  # exists / does not exist
    rf"|{_KEY}\s*(?:==|!=|=)\s*{_VALUE}"  # equality
    rf"|{_KEY}\s+(?:in|notin)\s*\(\s*{_VALUE}(?:\s*,\s*{_VALUE})*\s*\))\s*"  # set
)


def check_selector(selector: str, source: str = SELECTOR_ENV) -> str:
    """``selector`` if it is a label selector Kubernetes accepts (``a=b,c!=d,e in (f,g),!h``), else a
    :class:`~dyndisc.ConfigurationError` naming ``source``. Empty means no scope."""
    text = selector.strip()
    if not text:
        return ""
    # Commas inside a set's parentheses are not separators.
    requirements = re.split(r",(?![^()]*\))", text)
    for requirement in requirements:
        if not _REQUIREMENT.fullmatch(requirement):
            raise ConfigurationError(
                f"{source}={selector!r}: {requirement.strip()!r} is not a label selector requirement; write "
                f"e.g. {deployment_selector('my-graph')} (key=value, key!=value, key in (a,b), key or !key, "
                "comma-separated)"
            )
    return ",".join(r.strip() for r in requirements)


def deployment_selector(name: str) -> str:
    """The selector of one DynamoGraphDeployment's objects (:data:`DEPLOYMENT_LABEL` ``=<name>``)."""
    if not re.fullmatch(_NAME, name):
        raise ConfigurationError(f"{name!r} is not a DynamoGraphDeployment name (a label value)")
    return f"{DEPLOYMENT_LABEL}={name}"


def selector_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``DYN_KUBE_LABEL_SELECTOR``, checked; ``None`` when unset or empty (no scope)."""
    value = (os.environ if env is None else env).get(SELECTOR_ENV, "")
    return check_selector(value) or None


def combine(*selectors: str | None) -> str:
    """The selectors given, all required (Kubernetes ANDs a selector's comma-separated requirements)."""
    return ",".join(s for s in selectors if s)


def deployment_from_env(env: Mapping[str, str] | None = None, podinfo: Path | None = None) -> str | None:
    """The DynamoGraphDeployment a worker belongs to, which it labels its DynamoWorkerMetadata with so that
    scoped watchers find it: ``DYN_PARENT_DGD_K8S_NAME`` (the operator sets it), else the pod's own
    :data:`DEPLOYMENT_LABEL` in the Downward API file ``<podinfo>/labels`` when mounted; ``None`` when neither
    says (or what they say is not a label value)."""
    name = (os.environ if env is None else env).get(DEPLOYMENT_ENV, "").strip()
    if not name and podinfo is not None:
        name = pod_labels(podinfo / LABELS_FILE).get(DEPLOYMENT_LABEL, "")
    return name if name and re.fullmatch(_NAME, name) else None


def pod_labels(path: Path) -> dict[str, str]:
    """The labels in a Downward API ``metadata.labels`` file (``key="value"`` lines); empty if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    labels = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and value.startswith('"') and value.endswith('"') and len(value) >= 2:
            labels[key.strip()] = value[1:-1].replace('\\"', '"')
    return labels


__all__ = [
    "DEPLOYMENT_ENV",
    "DEPLOYMENT_LABEL",
    "SELECTOR_ENV",
    "check_selector",
    "combine",
    "deployment_from_env",
    "deployment_selector",
    "pod_labels",
    "selector_from_env",
]
