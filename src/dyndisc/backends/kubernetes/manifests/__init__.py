"""The manifests shipped with dyndisc: the DynamoWorkerMetadata CRD and the least-privilege RBAC.

Printed by ``dyndisc kube manifests``; reading them needs no Kubernetes client.
"""

from __future__ import annotations

from importlib import resources

#: The manifests there are, by the name ``--only`` takes.
MANIFESTS = {"crd": "crd.yaml", "rbac": "rbac.yaml"}


def manifest(name: str, namespace: str | None = None) -> str:
    """The text of a manifest shipped with dyndisc: ``crd.yaml`` or ``rbac.yaml``.

    ``rbac.yaml`` names its namespace ``NAMESPACE``; pass ``namespace`` to fill it in.
    """
    text = resources.files(__name__).joinpath(name).read_text()
    if namespace is not None:
        text = text.replace("namespace: NAMESPACE", f"namespace: {namespace}")
    return text


def manifests(namespace: str | None, only: str | None = None) -> str:
    """Every manifest (or ``only`` one: ``crd`` or ``rbac``) as one multi-document YAML text.

    The RBAC needs the ``namespace`` the workers run in.
    """
    if only is not None and only not in MANIFESTS:
        raise ValueError(f"unknown manifest {only!r}: choose {' or '.join(MANIFESTS)}")
    parts = []
    if only in (None, "crd"):
        parts.append(manifest(MANIFESTS["crd"]))
    if only in (None, "rbac"):
        if namespace is None:
            raise ValueError("the RBAC manifests need the namespace the workers run in (--namespace)")
        parts.append(manifest(MANIFESTS["rbac"], namespace))
    return "---\n".join(parts)
