"""The ``dyndisc`` subcommands: list, get, register, doctor, demo, ui and kube manifests (``watch`` is in
:mod:`dyndisc.cli.watching`)."""

from __future__ import annotations

import errno
import signal
import sys
import time

import anyio
import click

from dyndisc._extras import require
from dyndisc._models import Instance, InstanceQuery, Readiness
from dyndisc.cli.app import BACKEND_CHOICE, backend_options, main, run, settings
from dyndisc.cli.inputs import (
    parse_endpoint,
    parse_instance_ref,
    parse_metadata,
    parse_query,
    parse_transport,
)
from dyndisc.cli.layouts import layout_hint
from dyndisc.cli.output import (
    INSTANCE_COLUMNS,
    dumps,
    instance_json,
    instance_row,
    table,
)


@main.command("list")
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per instance, one per line.")
@backend_options
def list_(
    path: str | None, as_json: bool, backend: str | None, endpoints: str | None, wait: float | None
) -> None:
    """List the live instances under PATH (ns, ns.comp or ns.comp.ep; everything by default)."""
    query = parse_query(path)
    config = settings()
    config.override(backend, endpoints, wait)

    async def fetch() -> tuple[list[Instance], str | None]:
        async with config.backend_open() as opened:
            found = await opened.list(query)
            # Nothing here: perhaps the workers write the other key layout (said, not left silent).
            return found, (await layout_hint(opened, query) if not found else None)

    found, hint = run(fetch)
    if as_json:
        for instance in found:
            click.echo(dumps(instance_json(instance)))
    else:
        now = time.time()
        if found:
            rows = [instance_row(i, config.style, now) for i in found]
            click.echo(table(INSTANCE_COLUMNS, rows, config.style))
        click.echo(config.style.dim(f"{len(found)} instance(s) under {query}"), err=True)
    if hint is not None:
        click.echo(config.style.paint(hint, fg="yellow"), err=True)


@main.command()
@click.argument("instance")
@backend_options
def get(instance: str, backend: str | None, endpoints: str | None, wait: float | None) -> None:
    """Show one instance as JSON. INSTANCE is ns.comp.ep/<id>, the id as list prints it (hex)."""
    endpoint, as_hex, as_decimal = parse_instance_ref(instance)
    config = settings()
    config.override(backend, endpoints, wait)

    async def fetch() -> list[Instance]:
        async with config.backend_open() as opened:
            return await opened.list(InstanceQuery.for_endpoint(endpoint))

    found = {i.instance_id: i for i in run(fetch)}
    match = found.get(as_hex)
    if match is None and as_decimal is not None and as_decimal in found:
        match = found[as_decimal]
        click.echo(f"(read {as_decimal} as a decimal id: {as_decimal:x} in hex)", err=True)
    if match is None:
        live = ", ".join(f"{i:x}" for i in sorted(found)) or "none"
        raise click.ClickException(f"no live instance {as_hex:x} of {endpoint} (live: {live})")
    click.echo(dumps(instance_json(match), pretty=True))


@main.command()
@click.argument("path")
@click.option(
    "--transport", metavar="KIND://HOST:PORT", default=None, help="How to reach it, e.g. tcp://10.0.0.5:9000."
)
@click.option("--no-transport", is_flag=True, help="Register without a transport (nothing can call it).")
@click.option("--metadata", metavar="JSON", default="{}", help="A JSON object stored with the instance.")
@click.option("--draining", is_flag=True, help="Register as draining (watchers see it, routers skip it).")
@click.option(
    "--ttl", type=click.FloatRange(0.5, 3600), default=None, help="Lease TTL, seconds (DYN_LEASE_TTL)."
)
@backend_options
def register(
    path: str,
    transport: str | None,
    no_transport: bool,
    metadata: str,
    draining: bool,
    ttl: float | None,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """Register an instance of PATH (ns.comp.ep) and hold it until Ctrl-C or SIGTERM, then leave cleanly."""
    from dyndisc.runtime import DistributedRuntime

    endpoint = parse_endpoint(path)
    if transport is None and not no_transport:
        raise click.UsageError(
            "give --transport KIND://HOST:PORT (e.g. tcp://10.0.0.5:9000), or --no-transport"
        )
    if transport is not None and no_transport:
        raise click.UsageError("--transport and --no-transport do not go together")
    parsed = parse_transport(transport) if transport is not None else None
    meta = parse_metadata(metadata)
    readiness = Readiness.DRAINING if draining else Readiness.READY
    config = settings()
    config.override(backend, endpoints, wait)

    async def hold() -> None:
        async with config.backend_open() as opened, DistributedRuntime(opened, lease_ttl=ttl) as runtime:
            instance = await runtime.endpoint(str(endpoint)).register(parsed, meta, readiness=readiness)
            click.echo(f"registered {instance} (lease TTL {runtime.lease_ttl:g}s); Ctrl-C to leave")
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            click.echo("leaving")

    run(hold)


@main.command()
@click.option(
    "-b", "--backend", default="memory", show_default=True, type=BACKEND_CHOICE, help="Discovery backend."
)
@click.option(
    "--ttl", default=2.0, show_default=True, type=click.FloatRange(0.5, 60), help="Lease TTL, seconds."
)
def demo(backend: str, ttl: float) -> None:
    """Workers join, leave and crash while a frontend watches the instance set (in memory by default)."""
    from dyndisc.cli.demo import run_demo

    run(run_demo, backend, ttl)


@main.command()
@backend_options
@click.option(
    "--ttl", default=2.0, show_default=True, type=click.FloatRange(1, 60), help="TTL of the probe lease, s."
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5, 300),
    help="Seconds each check may take.",
)
@click.option(
    "--namespace",
    "-n",
    default=None,
    help="The namespace these credentials must write (a worker's); default: the one they say, else none.",
)
def doctor(
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
    ttl: float,
    timeout: float,
    namespace: str | None,
) -> None:
    """Check the backend end to end: settings, connectivity and auth, lease and watch round trips, what the
    credentials may read and write, CRD and RBAC on Kubernetes, clocks. Prints what is wrong and how to fix
    it; exits 1 if a check failed."""
    from dyndisc.cli.doctor import run_doctor

    config = settings()
    config.override(backend, endpoints, wait)
    name = config.apply_endpoints()
    if config.endpoints is not None:
        run(config.open_backend().aclose)  # a mistyped --endpoints is a usage error here too, not a finding
    report = run(lambda: run_doctor(name, ttl=ttl, timeout=timeout, namespace=namespace))
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("path", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks one.")
@click.option("--allow-remote", is_flag=True, help="Allow an address other machines can reach (see --token).")
@click.option(
    "--token",
    envvar="DYNDISC_UI_TOKEN",
    default=None,
    help="Require this bearer token (env DYNDISC_UI_TOKEN).",
)
@backend_options
def ui(
    path: str | None,
    host: str,
    port: int,
    allow_remote: bool,
    token: str | None,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """Serve a live web page of the instances under PATH (read-only; Ctrl-C to stop)."""
    from dyndisc.ui import is_loopback, serve

    query = parse_query(path)
    if not is_loopback(host) and not allow_remote:
        raise click.UsageError(
            f"--host {host} can be reached from other machines: pass --allow-remote too (and --token)"
        )
    require("dyndisc ui", "ui", "aiohttp")  # checked first: a missing extra is one clear line, exit 1
    config = settings()
    config.override(backend, endpoints, wait)
    if not is_loopback(host):
        click.echo(
            f"warning: serving on {host}: anyone who can reach it "
            + ("with the token " if token else "")
            + "sees every instance and its metadata",
            err=True,
        )

    def ready(url: str) -> None:
        click.echo(f"dyndisc ui: {url}" + (f"?token={token}" if token else "") + " (Ctrl-C to stop)")

    async def serve_page() -> None:
        async with config.backend_open() as opened:
            try:
                await serve(opened, query, host=host, port=port, token=token, on_ready=ready)
            except OSError as exc:  # it listens before anything else: this is the address
                raise click.ClickException(_cannot_listen(host, port, exc)) from None

    run(serve_page)


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        why = "something else listens there"
    elif exc.errno == errno.EACCES:
        why = "this user may not listen there (ports below 1024 need privileges)"
    else:
        why = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port}: {why}; pick another --port (--port 0 picks a free one)"


@main.group()
def kube() -> None:
    """Kubernetes helpers."""


@kube.command("manifests")
@click.option("--namespace", default=None, help="The namespace the workers run in (needed for the RBAC).")
@click.option(
    "--only", type=click.Choice(["crd", "rbac"]), default=None, help="Print only the CRD, or only the RBAC."
)
def kube_manifests(namespace: str | None, only: str | None) -> None:
    """Print the DynamoWorkerMetadata CRD and the least-privilege RBAC, for 'kubectl apply -f -'."""
    from dyndisc.backends.kubernetes.manifests import manifests

    if only != "crd" and namespace is None:
        raise click.UsageError("--namespace is required for the RBAC manifests (or pass --only crd)")
    click.echo(manifests(namespace, only), nl=False)
