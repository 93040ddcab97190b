"""``dyndisc access``: what it prints without a server (``--dry-run``, NATS entries) and its usage errors.
Applying roles to a real etcd, and nats-server running with the printed entries, are tested in
``tests/backends/etcd/test_etcd_scopes.py`` and ``tests/backends/nats/test_nats_scopes.py``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats.access import authorization_fragment
from dyndisc.cli import main


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["access", *args])
    return result.exit_code, result.output


def test_dry_run_prints_the_etcdctl_commands_of_a_worker() -> None:
    code, output = invoke(
        "etcd",
        "--namespace",
        "a b",
        "--user",
        "w a",
        "--role",
        "worker",
        "--password-file",
        "/run/pw",
        "--dry-run",
    )
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "# role dyndisc-worker-a b for user w a: run as etcd's root user, on a new setup"
    assert "etcdctl role add 'dyndisc-worker-a b'" in lines
    assert (
        "etcdctl role grant-permission 'dyndisc-worker-a b' readwrite '/services/a b/' --prefix=true" in lines
    )
    assert "etcdctl role grant-permission 'dyndisc-worker-a b' read /services/ --prefix=true" in lines
    assert (
        "etcdctl role grant-permission 'dyndisc-worker-a b' readwrite 'v1/instances/a b/' --prefix=true"
        in lines
    )
    assert "etcdctl user add 'w a' --interactive=false < /run/pw" in lines
    assert lines[-1] == "etcdctl user grant-role 'w a' 'dyndisc-worker-a b'"


def test_dry_run_prints_a_plain_list_of_grants() -> None:
    code, output = invoke("etcd", "-n", "a", "-u", "w-a", "-r", "worker", "--dry-run", "--format", "grants")
    assert code == 0, output
    assert output.splitlines() == [
        "# role dyndisc-worker-a for user w-a",
        "readwrite  prefix /dyndisc/leaving/",  # the departure markers its exit leaves
        "read       prefix /services/",
        "readwrite  prefix /services/a/",
        "read       prefix /v1/event_channels/",
        "readwrite  prefix /v1/event_channels/namespace/a/",
        "read       prefix /v1/mdc/",
        "readwrite  prefix /v1/mdc/a/",
        "read       prefix v1/",
        "readwrite  prefix v1/dyndisc_endpoints/a/",
        "readwrite  prefix v1/event_channels/namespace/a/",
        "readwrite  prefix v1/instances/a/",
        "readwrite  prefix v1/mdc/a/",
    ]
    code, output = invoke("etcd", "-u", "ops", "-r", "operator", "--dry-run", "--format", "grants")
    assert output.splitlines()[1:] == ["read       every key"]
    code, output = invoke("etcd", "-u", "ops", "-r", "operator", "--dry-run")
    assert "etcdctl role grant-permission dyndisc-operator read '' --prefix=true" in output.splitlines()


def test_nats_prints_the_authorization_entry_of_a_role(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    code, output = invoke("nats", "-n", "a", "-u", "w-a", "-r", "worker", "--password-file", str(password))
    assert code == 0, output
    scope = Scope(Role.WORKER, "a", ("dyndisc",))
    assert output == authorization_fragment(scope, "w-a", password="s3cret") + "\n"
    assert "# its processes run with NATS_USER=w-a NATS_SCOPE=w-a NATS_KV_BUCKET=dyndisc" in output
    assert '"$KV.dyndisc.=.services.a.>"' in output
    code, output = invoke("nats", "-u", "fe", "-r", "frontend", "--kv-bucket", "other", "--format", "json")
    entry = json.loads(output)
    assert entry["user"] == "fe"
    assert entry["password"] == "$DYNDISC_PASSWORD_FE", (
        "without a password, nats-server reads it from its env"
    )
    assert entry["permissions"]["subscribe"] == {"allow": ["_INBOX.fe.>"]}
    publish = entry["permissions"]["publish"]["allow"]
    assert "$KV.other._dyndisc/lease.fe.*" in publish
    assert not [s for s in publish if s.startswith("$KV.other.=")], "a frontend publishes no key"


def test_mistakes_are_usage_errors() -> None:
    code, output = invoke("etcd", "-u", "w", "-r", "worker", "--dry-run")
    assert code == 2
    assert "a worker writes one namespace: give --namespace" in output
    code, output = invoke("etcd", "-n", "a.b", "-u", "w", "-r", "worker", "--dry-run")
    assert code == 1
    assert "invalid namespace name 'a.b'" in output
    code, output = invoke("nats", "-n", "a", "-u", "w", "-r", "worker", "--password-file", "/no/such/file")
    assert code == 2
    assert "cannot read '/no/such/file'" in output
    code, output = invoke("etcd", "-n", "a", "-u", "w", "-r", "worker", "--bucket", "services", "--dry-run")
    assert code == 1
    assert "--bucket 'services'" in output
