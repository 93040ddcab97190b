"""``dyndisc access``: least-privilege credentials for dyndisc processes, one role per process.

``dyndisc access etcd`` makes (or, with ``--dry-run``, prints) the etcd role and user of a worker of one
namespace, a frontend or an operator, with the root credentials of ``ETCD_AUTH_*``; ``dyndisc access nats``
prints the nats-server authorization entry of the same role. The grants come from
:mod:`dyndisc.backends.kv.scopes`, the etcd side from :mod:`dyndisc.backends.etcd.access`, the NATS side from
:mod:`dyndisc.backends.nats.access`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dyndisc.backends.kv.layouts import LAYOUT_NAMES
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.cli.app import main, run, settings

if TYPE_CHECKING:  # the etcd client is imported when the command runs, not when the CLI starts
    from dyndisc.backends.etcd.access import Applied

ROLE_CHOICE = click.Choice([r.value for r in Role], case_sensitive=False)


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        why = f"cannot read {str(path)!r}: {exc.strerror}"
        raise click.BadParameter(why, param_hint="--password-file") from None
    password = text.rstrip("\r\n")  # a file ends with a newline; the password does not
    if not password:
        raise click.BadParameter(f"{str(path)!r} is empty", param_hint="--password-file")
    return password


def _scope(role: str, namespace: str | None, layouts: tuple[str, ...], buckets: tuple[str, ...]) -> Scope:
    if Role(role) is Role.WORKER and namespace is None:
        raise click.UsageError("a worker writes one namespace: give --namespace")
    return Scope(Role(role), namespace, layouts or LAYOUT_NAMES, buckets)


@main.group()
def access() -> None:
    """Least-privilege credentials: a worker writes only its namespace, a frontend only reads.

    A worker of namespace NS may write its instances, their draining records, its model cards, event
    channels and bucket entries (--bucket), in both key layouts, and read what routing needs; a frontend
    reads every namespace; an operator (the CLI, the UI) reads every key. See docs/security.md.
    """


@access.command("etcd")
@click.option("--namespace", "-n", default=None, help="The namespace a worker writes (workers only need it).")
@click.option("--user", "-u", required=True, help="The etcd user the process authenticates as.")
@click.option("--role", "-r", type=ROLE_CHOICE, required=True, help="worker, frontend or operator.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The user's password (needed to create the user; an existing user's password is set to it).",
)
@click.option("--no-password", is_flag=True, help="A user that authenticates by its TLS certificate's name.")
@click.option("--bucket", "buckets", multiple=True, help="Also a metadata bucket (its NS/ keys); repeatable.")
@click.option(
    "--layout",
    "layouts",
    multiple=True,
    type=click.Choice(LAYOUT_NAMES),
    help="Key layouts to cover (default: both, so DYN_KV_LAYOUT can change without a new role).",
)
@click.option("--dry-run", is_flag=True, help="Print what to do instead of doing it (no server is asked).")
@click.option(
    "--format",
    "output",
    type=click.Choice(["etcdctl", "grants"]),
    default="etcdctl",
    show_default=True,
    help="With --dry-run: etcdctl commands, or the plain list of grants.",
)
@click.option("--endpoints", metavar="URLS", default=None, help="As the global --endpoints.")
def access_etcd(
    namespace: str | None,
    user: str,
    role: str,
    password_file: Path | None,
    no_password: bool,
    buckets: tuple[str, ...],
    layouts: tuple[str, ...],
    dry_run: bool,
    output: str,
    endpoints: str | None,
) -> None:
    """Make the etcd role and user of one process (idempotent: only what differs is changed).

    Uses the root credentials of ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD (and ETCD_AUTH_CA ... for TLS).
    A second run changes nothing; a role whose grants drifted is brought back, each change said.
    """
    from dyndisc.backends.etcd.access import etcdctl_commands, grant_lines

    scope = _scope(role, namespace, layouts, buckets)
    if password_file is not None and no_password:
        raise click.UsageError("give --password-file or --no-password, not both")
    if dry_run:
        if output == "grants":
            click.echo(f"# role {scope.role_name} for user {user}")
            for line in grant_lines(scope):
                click.echo(line)
            return
        click.echo(f"# role {scope.role_name} for user {user}: run as etcd's root user, on a new setup")
        click.echo("# (on an existing one, 'dyndisc access etcd' without --dry-run changes what differs)")
        path = str(password_file) if password_file is not None else None
        for line in etcdctl_commands(scope, user, password_file=path, no_password=no_password):
            click.echo(line)
        return
    password = _read_password(password_file)
    config = settings()
    config.override("etcd", endpoints, None)
    config.apply_endpoints()
    applied = run(_apply_etcd, scope, user, password, no_password, config.wait)
    where = os.environ.get("ETCD_ENDPOINTS", "http://localhost:2379")
    header = f"etcd at {where}: role {scope.role_name!r} for user {user!r}"
    if applied.changes:
        click.echo(f"{header}:")
        for change in applied.changes:
            click.echo(f"  {change}")
    else:
        click.echo(f"{header}: nothing to change (every grant and the user are as they should be)")
    for note in applied.notes:
        click.echo(f"note: {note}", err=True)


async def _apply_etcd(
    scope: Scope, user: str, password: str | None, no_password: bool, wait: float
) -> Applied:
    from dyndisc.backends.etcd import EtcdSettings, EtcdStore
    from dyndisc.backends.etcd.access import EtcdAccess

    store = EtcdStore(EtcdSettings.load(startup_connect_timeout_seconds=wait))
    try:
        return await EtcdAccess(store.connection).apply(
            scope, user, password=password, no_password=no_password
        )
    finally:
        await store.aclose()


@access.command("nats")
@click.option("--namespace", "-n", default=None, help="The namespace a worker writes (workers only need it).")
@click.option("--user", "-u", required=True, help="The nats-server user the process connects as.")
@click.option("--role", "-r", type=ROLE_CHOICE, required=True, help="worker, frontend or operator.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Put this password in the entry (else it reads $DYNDISC_PASSWORD_<USER> at the server's start).",
)
@click.option("--bucket", "buckets", multiple=True, help="Also a metadata bucket (its NS/ keys); repeatable.")
@click.option(
    "--kv-bucket",
    envvar="NATS_KV_BUCKET",
    default="dyndisc",
    show_default=True,
    help="The NATS KV bucket (env NATS_KV_BUCKET).",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["conf", "json"]),
    default="conf",
    show_default=True,
    help="An entry of nats-server's authorization users, or the same as JSON.",
)
def access_nats(
    namespace: str | None,
    user: str,
    role: str,
    password_file: Path | None,
    buckets: tuple[str, ...],
    kv_bucket: str,
    output: str,
) -> None:
    """Print the nats-server authorization entry of one process's user (nothing is changed).

    Add the entry to 'authorization { users = [ ... ] }' of nats-server's configuration and reload it
    (nats-server --signal reload); the process connects with NATS_USER, NATS_PASSWORD and the NATS_SCOPE the
    entry's comment names.
    """
    from dyndisc.backends.nats.access import authorization_fragment, user_entry

    scope = _scope(role, namespace, ("dyndisc",), buckets)
    password = _read_password(password_file)
    if output == "json":
        entry = user_entry(scope, user, bucket=kv_bucket, password=password)
        click.echo(json.dumps(entry, indent=2, ensure_ascii=False))
        return
    click.echo(authorization_fragment(scope, user, bucket=kv_bucket, password=password))
