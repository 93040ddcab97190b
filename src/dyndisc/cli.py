"""The ``dyndisc`` command line: inspect and exercise discovery with the library's own settings."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import click

from dyndisc._errors import DyndiscError
from dyndisc._models import Added, EndpointId, Instance, InstanceQuery, Removed, Resync
from dyndisc._settings import BACKEND_ALIASES, BACKEND_NAMES
from dyndisc.backends import DiscoveryBackend, create_backend

BACKENDS = click.Choice([*BACKEND_NAMES, *BACKEND_ALIASES], case_sensitive=False)
backend_option = click.option(
    "--backend",
    envvar="DYN_DISCOVERY_BACKEND",
    default="etcd",
    show_default=True,
    type=BACKENDS,
    help="Discovery backend (env DYN_DISCOVERY_BACKEND); its settings come from the environment.",
)


def _run(main: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    try:
        return anyio.run(main, *args)
    except DyndiscError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        sys.exit(130)


def _query(path: str | None) -> InstanceQuery:
    try:
        return InstanceQuery.parse(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from exc


def instance_json(instance: Instance) -> dict[str, Any]:
    """The one JSON shape of an instance on the command line (``list --json``, ``get``, ``watch --json``):
    the id in hex as the tables print it (64-bit ids overflow JSON numbers in many readers)."""
    return {
        "endpoint": str(instance.endpoint_id),
        "instance_id": f"{instance.instance_id:x}",
        "transport": str(instance.transport) if instance.transport is not None else None,
        "metadata": instance.metadata,
        "readiness": instance.readiness.value,
    }


def event_json(event: Resync | Added | Removed) -> dict[str, Any]:
    """A watch event as one line of ``watch --json`` (with a time-zone-aware timestamp)."""
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    if isinstance(event, Resync):
        return {"event": "resync", "at": at, "instances": [instance_json(i) for i in event.instances]}
    if isinstance(event, Added):
        return {"event": "added", "at": at, "instance": instance_json(event.instance)}
    return {
        "event": "removed",
        "at": at,
        "endpoint": str(event.endpoint),
        "instance_id": f"{event.instance_id:x}",
    }


def _row(instance: Instance) -> str:
    meta = json.dumps(instance.metadata, separators=(",", ":")) if instance.metadata else ""
    where, state = str(instance.transport or "-"), instance.readiness.value
    return f"{instance.endpoint_id!s:40} {instance.instance_id:16x}  {state:8} {where:28} {meta}"


async def _with_backend(name: str, use: Callable[[DiscoveryBackend], Awaitable[Any]]) -> Any:
    async with create_backend(name) as backend:
        return await use(backend)


@click.group()
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """dyndisc: discovery for a distributed LLM-serving runtime."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("list")
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@backend_option
def list_(path: str | None, as_json: bool, backend: str) -> None:
    """List live instances under PATH (ns, ns.comp or ns.comp.ep; everything by default)."""
    query = _query(path)
    found: list[Instance] = _run(_with_backend, backend, lambda b: b.list(query))
    for instance in found:
        click.echo(json.dumps(instance_json(instance)) if as_json else _row(instance))
    if not as_json:
        click.echo(f"{len(found)} instance(s) under {query}", err=True)


@main.command()
@click.argument("instance")
@backend_option
def get(instance: str, backend: str) -> None:
    """Show one instance as JSON: INSTANCE is ns.comp.ep/<instance id in hex>."""
    path, _, hex_id = instance.partition("/")
    try:
        endpoint, instance_id = EndpointId.parse(path), int(hex_id, 16)
    except ValueError as exc:
        raise click.BadParameter(f"expected ns.comp.ep/<hex id>: {exc}", param_hint="INSTANCE") from exc
    found: list[Instance] = _run(
        _with_backend, backend, lambda b: b.list(InstanceQuery.for_endpoint(endpoint))
    )
    for candidate in found:
        if candidate.instance_id == instance_id:
            click.echo(json.dumps(instance_json(candidate), indent=2))
            return
    raise click.ClickException(f"no live instance {instance_id:x} of {endpoint}")


@main.command()
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line (NDJSON).")
@backend_option
def watch(path: str | None, as_json: bool, backend: str) -> None:
    """Print changes to the instances under PATH as they happen (Ctrl-C to stop)."""
    query = _query(path)

    async def follow(b: DiscoveryBackend) -> None:
        async with b.watch(query) as events:
            async for event in events:
                if as_json:
                    click.echo(json.dumps(event_json(event)))
                    continue
                stamp = datetime.now().isoformat(timespec="milliseconds")
                if isinstance(event, Resync):
                    click.echo(f"{stamp} = {len(event.instances)} live under {query}")
                    for instance in event.instances:
                        click.echo(f"{stamp}   {_row(instance)}")
                elif isinstance(event, Added):
                    click.echo(f"{stamp} + {_row(event.instance)}")
                elif isinstance(event, Removed):
                    click.echo(f"{stamp} - {event.endpoint!s:40} {event.instance_id:16x}")

    _run(_with_backend, backend, follow)


@main.command()
@click.argument("path")
@click.option("--transport", default=None, help="How to reach it, e.g. tcp://10.0.0.5:9000.")
@click.option("--metadata", default="{}", help="JSON object stored with the instance.")
@click.option(
    "--ttl", type=click.FloatRange(0.5, 3600), default=None, help="Lease TTL, seconds (DYN_LEASE_TTL)."
)
@backend_option
def register(path: str, transport: str | None, metadata: str, ttl: float | None, backend: str) -> None:
    """Register an instance of PATH (ns.comp.ep) and hold it until Ctrl-C or SIGTERM."""
    from dyndisc._runtime import DistributedRuntime

    try:
        meta = json.loads(metadata)
        endpoint = EndpointId.parse(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not isinstance(meta, dict):
        raise click.BadParameter("--metadata must be a JSON object")

    async def hold() -> None:
        async with DistributedRuntime(backend, lease_ttl=ttl) as runtime:
            instance = await runtime.endpoint(str(endpoint)).register(transport, meta)
            click.echo(f"registered {instance} (lease TTL {runtime.lease_ttl}s); Ctrl-C to leave")
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            click.echo("leaving")

    _run(hold)


@main.command()
@click.option(
    "--backend",
    default="memory",
    show_default=True,
    type=BACKENDS,
    help="Discovery backend; its settings come from the environment (ETCD_ENDPOINTS, NATS_SERVER ...).",
)
@click.option(
    "--ttl", default=2.0, show_default=True, type=click.FloatRange(0.5, 60), help="Lease TTL, seconds."
)
def demo(backend: str, ttl: float) -> None:
    """Workers join, leave and crash while a frontend watches the instance set."""
    from dyndisc._demo import run_demo

    _run(run_demo, backend, ttl)


@main.command()
@backend_option
@click.option(
    "--ttl", default=2.0, show_default=True, type=click.FloatRange(1, 60), help="TTL of the probe lease, s."
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5, 300),
    help="How long each check may take, seconds.",
)
def doctor(backend: str, ttl: float, timeout: float) -> None:
    """Check the configured backend: connectivity, auth, lease and watch round trips, CRD and RBAC on
    Kubernetes, clocks. Prints what is wrong and how to fix it; exits 1 if a check failed."""
    from dyndisc._doctor import run_doctor

    report = _run(lambda: run_doctor(backend, ttl=ttl, timeout=timeout))
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


@main.group()
def kube() -> None:
    """Kubernetes helpers."""


@kube.command("manifests")
@click.option("--namespace", default=None, help="The namespace the workers run in (needed for the RBAC).")
@click.option("--only", type=click.Choice(["crd", "rbac"]), default=None, help="Print only one of the two.")
def kube_manifests(namespace: str | None, only: str | None) -> None:
    """Print the DynamoWorkerMetadata CRD and the least-privilege RBAC: pipe into 'kubectl apply -f -'."""
    from dyndisc.backends.kubernetes.manifests import manifests

    if only != "crd" and namespace is None:
        raise click.UsageError("--namespace is required for the RBAC manifests (or pass --only crd)")
    click.echo(manifests(namespace, only), nl=False)


if __name__ == "__main__":
    main()
