"""``dyndisc doctor``'s scope check on a key-value backend: with the credentials in use, what can it read,
which namespace can it write, and is it kept out of the others? Asked of the server without writing
anything (:meth:`~dyndisc.backends.kv.KeyValueStore.may_write` probes a write that cannot succeed)."""

from __future__ import annotations

import secrets

import anyio

from dyndisc._models import InstanceQuery
from dyndisc.backends.diagnosis import Report, Status
from dyndisc.backends.kv.discovery import KvDiscovery
from dyndisc.backends.kv.scopes import namespace_of, namespace_prefixes, reader_prefixes

#: The namespace probed when the credentials do not say which one they write.
PROBE_NAMESPACE = "dyndisc-doctor"
#: The name of the last segment of a probed key (nothing is written there).
PROBE_KEY = "dyndisc-doctor-probe"


def _fix(namespace: str, backend: str) -> str:
    role = f"--namespace {namespace} --user <user> --role worker"
    if backend in ("etcd", "nats"):
        return f"give the user the worker role of {namespace!r}: dyndisc access {backend} {role}"
    return f"give the credentials write access to namespace {namespace!r}"


async def check_scope(
    report: Report, discovery: KvDiscovery, namespace: str | None, timeout: float
) -> tuple[str, bool] | None:
    """Report what the credentials may read and write; return the namespace the watch round trip may
    register its probe in and whether it may (``None`` when the store cannot tell: no access control)."""
    store = discovery.store
    layout = discovery.layout
    name = store.name
    try:
        with anyio.fail_after(timeout):
            readable = {p: await store.may_read(p) for p in reader_prefixes(layout)}
            if any(answer is None for answer in readable.values()):
                report.add(
                    "access scope",
                    Status.SKIP,
                    f"the {name} backend has no access control of its own"
                    + (" (the files' permissions decide)" if name == "file" else ""),
                )
                return None
            writes = await store.writable_prefixes()
            granted = [n for p in writes or () if (n := namespace_of(p)) is not None]
            target = namespace or (granted[0] if granted else PROBE_NAMESPACE)
            mine = {p: await store.may_write(p + PROBE_KEY) for p in namespace_prefixes(layout, target)}
            other = f"dyndisc-doctor-{secrets.token_hex(3)}"
            theirs = {p: await store.may_write(p + PROBE_KEY) for p in namespace_prefixes(layout, other)}
    except Exception as exc:
        report.add("access scope", Status.FAIL, f"could not check it: {exc}")
        return None

    who = store.principal or "no credentials (the server lets anyone do anything)"
    if granted:
        said = ", ".join(map(repr, dict.fromkeys(granted)))
        who += f", whose roles may write namespace {said}"
    report.add("access", Status.OK, who)

    unreadable = [p for p, ok in readable.items() if not ok]
    instances = layout.watch_prefix(InstanceQuery())
    if instances in unreadable:
        report.add(
            "can read",
            Status.FAIL,
            f"cannot read {instances} (the instances routing needs)",
            f"give the user a dyndisc role: dyndisc access {name} --user <user> --role frontend",
        )
    elif unreadable:
        report.add(
            "can read",
            Status.WARN,
            f"{', '.join(p for p in readable if p not in unreadable)}; not {', '.join(unreadable)}",
            f"give the user a dyndisc role: dyndisc access {name} --user <user> --role frontend",
        )
    else:
        report.add("can read", Status.OK, f"{', '.join(readable)} (everything routing reads)")

    allowed = [p for p, ok in mine.items() if ok]
    refused = [p for p, ok in mine.items() if not ok]
    if not allowed:
        if namespace is not None:
            report.add(
                "can write",
                Status.FAIL,
                f"nothing of namespace {target!r}: a process with these credentials cannot register there",
                _fix(target, name),
            )
        else:
            report.add(
                "can write",
                Status.OK,
                f"nothing of namespace {target!r}: read-only credentials (a frontend or an operator; pass "
                "--namespace to check a worker's)",
            )
    elif refused:
        report.add(
            "can write",
            Status.WARN,
            f"namespace {target!r} in part: {', '.join(allowed)}; not {', '.join(refused)} (what is written "
            "there would be refused)",
            _fix(target, name) + " (a role that drifted is brought back)",
        )
    else:
        report.add("can write", Status.OK, f"namespace {target!r} ({', '.join(allowed)})")

    if any(theirs.values()):
        report.add(
            "other namespaces",
            Status.OK,
            f"writable too (e.g. {other!r}): these credentials are not confined to a namespace, so a process "
            "holding them can register in any (see docs/security.md: dyndisc access)",
        )
    else:
        confined = f": confined to {target!r}" if allowed else ""
        report.add("other namespaces", Status.OK, f"cannot write {other!r} ({', '.join(theirs)}){confined}")
    return target, layout.prefix_for(InstanceQuery(target)) in allowed
