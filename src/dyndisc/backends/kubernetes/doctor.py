"""The Kubernetes part of ``dyndisc doctor``: credentials, the CRD, the Role's rights, the clock."""

from __future__ import annotations

import os
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import yaml

from dyndisc._errors import MissingExtraError
from dyndisc.backends.diagnosis import SKEW_WARNING, BackendDoctor, Report, Status
from dyndisc.backends.kubernetes.errors import KubeStatusError
from dyndisc.backends.kubernetes.identity import PodIdentity
from dyndisc.backends.kubernetes.join import GROUP, KIND, PLURAL, VERSION
from dyndisc.backends.kubernetes.manifests import manifest

if TYPE_CHECKING:
    from dyndisc.backends.kubernetes.api import KubeApi


class Checked(Protocol):
    """What the checks need of the backend (:class:`KubernetesDiscovery`)."""

    identity: PodIdentity | None

    async def api(self) -> KubeApi: ...

    async def namespace(self) -> str: ...


#: How to install what is missing (the ``dyndisc kube manifests`` command prints the shipped manifests).
CRD_FIX = "dyndisc kube manifests --only crd | kubectl apply -f -   (needs cluster-admin once)"
RBAC_FIX = (
    "dyndisc kube manifests --only rbac --namespace {ns} | kubectl apply -f -   and run the pods with "
    "serviceAccountName: dyndisc-discovery (or bind the Role dyndisc-discovery to {user})"
)


def _credentials_fix(exc: Exception) -> str:
    if isinstance(exc, MissingExtraError):
        return exc.install
    if isinstance(exc, TimeoutError):
        return KubeDoctor.reach_fix
    return "set KUBECONFIG to a kubeconfig of the cluster (in a pod: mount its service account token)"


def required_rights() -> list[tuple[str, str, str]]:
    """``(group, resource, verb)`` for every right of the shipped Role (``rbac.yaml``)."""
    rights: list[tuple[str, str, str]] = []
    for doc in yaml.safe_load_all(manifest("rbac.yaml")):
        if isinstance(doc, dict) and doc.get("kind") == "Role":
            for rule in doc.get("rules") or ():
                for group in rule.get("apiGroups") or ():
                    for resource in rule.get("resources") or ():
                        rights.extend((group, resource, verb) for verb in rule.get("verbs") or ())
    return rights


class KubeDoctor(BackendDoctor):
    """Credentials, the CRD and the Role's rights before the shared checks; the API server's clock."""

    fixes = (
        ("rejected our credentials", "the Kubernetes token is missing, wrong or expired: refresh KUBECONFIG"),
        ("forbidden", "dyndisc kube manifests --namespace <namespace> | kubectl apply -f -"),
    )
    reach_fix = "check that the API server of KUBECONFIG (or of the pod's service account) is reachable"

    def __init__(self, backend: Checked) -> None:
        self.backend = backend

    async def preflight(self, report: Report, timeout: float) -> bool:
        try:
            with anyio.fail_after(timeout):
                api = await self.backend.api()
                namespace = await self.backend.namespace()
        except Exception as exc:
            report.add("credentials", Status.FAIL, str(exc) or type(exc).__name__, _credentials_fix(exc))
            return False
        user = await _check_identity(report, api, timeout)
        if user is None:
            return False
        await _check_clock(report, api, timeout)
        crd = await _check_crd(report, api, timeout)
        rbac = await _check_rbac(report, api, namespace, user, timeout)
        return crd and rbac

    def no_lease_reason(self) -> str | None:
        if self.backend.identity is None and not os.environ.get("POD_NAME"):
            return "no POD_NAME: this is not a worker pod, so it holds no lease"
        return None

    async def check_clock(self, report: Report) -> None:
        """Reported by :meth:`preflight` already: liveness here is pod readiness, not a clock."""


def server_clock_skew(date_header: str | None) -> float | None:
    """Seconds the server's HTTP ``Date`` is ahead of this host (``None`` if absent or unreadable)."""
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


async def _check_identity(report: Report, api: KubeApi, timeout: float) -> str | None:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        with anyio.fail_after(timeout):
            reply = await api.request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                what="asking the API server who we are",
                body=body,
            )
    except KubeStatusError as exc:
        explained = api.explain(exc)
        fix = "refresh the token in KUBECONFIG (or the pod's service account)" if exc.status == 401 else None
        report.add("credentials", Status.FAIL, str(explained), fix)
        return None
    except Exception as exc:
        report.add(
            "credentials", Status.FAIL, str(exc) or f"no answer within {timeout:g}s", "check KUBECONFIG"
        )
        return None
    info = (reply.get("status") or {}).get("userInfo") or {}
    user = str(info.get("username") or "?")
    report.add("credentials", Status.OK, f"{api.host} knows us as {user!r} (from {api.source})")
    return user


async def _check_clock(report: Report, api: KubeApi, timeout: float) -> None:
    try:
        with anyio.fail_after(timeout):
            skew = server_clock_skew(await api.server_date())
    except Exception as exc:
        report.add("clock", Status.SKIP, f"could not read the API server's clock ({exc})")
        return
    if skew is None:
        report.add("clock", Status.SKIP, "the API server sent no Date header")
    elif abs(skew) >= SKEW_WARNING + 1:  # Date has whole-second resolution
        report.add(
            "clock",
            Status.WARN,
            f"the API server's clock is {skew:+.1f}s from this host's; timestamps in events and logs will "
            "disagree (discovery itself does not depend on it: liveness is pod readiness)",
            "synchronise the clocks (chrony / NTP)",
        )
    else:
        report.add("clock", Status.OK, f"the API server's clock is within {abs(skew):.1f}s of this host's")


async def _check_crd(report: Report, api: KubeApi, timeout: float) -> bool:
    name = "CRD"
    try:
        with anyio.fail_after(timeout):
            found = await api.request("GET", f"/apis/{GROUP}/{VERSION}", what=f"reading API group {GROUP}")
    except KubeStatusError as exc:
        if exc.status == 404:
            report.add(
                name,
                Status.FAIL,
                f"the API server does not serve {GROUP}/{VERSION}: the {KIND} CRD "
                f"({PLURAL}.{GROUP}) is not installed",
                CRD_FIX,
            )
        else:
            report.add(name, Status.FAIL, str(api.explain(exc)))
        return False
    except Exception as exc:
        report.add(name, Status.FAIL, str(exc) or f"no answer within {timeout:g}s")
        return False
    served = {r.get("name") for r in found.get("resources") or () if isinstance(r, dict)}
    if PLURAL not in served:
        report.add(name, Status.FAIL, f"{GROUP}/{VERSION} is served but has no {PLURAL}", CRD_FIX)
        return False
    report.add(name, Status.OK, f"{KIND} ({PLURAL}.{GROUP}/{VERSION}) is installed")
    return True


async def _allowed(api: KubeApi, namespace: str, group: str, resource: str, verb: str) -> bool:
    review: dict[str, Any] = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": namespace,
                "group": group,
                "resource": resource,
                "verb": verb,
            }
        },
    }
    reply = await api.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        what=f"asking whether we may {verb} {resource}",
        body=review,
    )
    return bool((reply.get("status") or {}).get("allowed"))


async def _check_rbac(report: Report, api: KubeApi, namespace: str, user: str, timeout: float) -> bool:
    name = "RBAC"
    rights = required_rights()
    try:
        with anyio.fail_after(timeout):
            missing = [r for r in rights if not await _allowed(api, namespace, *r)]
    except KubeStatusError as exc:
        report.add(name, Status.FAIL, str(api.explain(exc)))
        return False
    except Exception as exc:
        report.add(name, Status.FAIL, str(exc) or f"no answer within {timeout:g}s")
        return False
    if missing:
        listed = ", ".join(
            f"{verb} {resource}" + (f".{group}" if group else "") for group, resource, verb in missing
        )
        report.add(
            name,
            Status.FAIL,
            f"{user!r} may not, in namespace {namespace!r}: {listed}",
            RBAC_FIX.format(ns=namespace, user=user),
        )
        return False
    report.add(
        name, Status.OK, f"{user!r} has all {len(rights)} rights of the discovery Role in {namespace!r}"
    )
    return True
