"""The tools an operator uses work fully with read-only credentials (a frontend's or an operator's role, as
``dyndisc access`` makes them): ``list``, ``get``, ``watch``, ``doctor`` and the UI, on etcd with auth and
on nats-server with authorization. A worker of the namespace writes what they read."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from click.testing import CliRunner

from dyndisc import DistributedRuntime, InstanceQuery, KvDiscovery
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.etcd.access import EtcdAccess
from dyndisc.backends.kv import KeyValueStore
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.backends.nats.access import authorization_fragment
from dyndisc.cli import main
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer, NatsServer
from dyndisc.ui import serve

PASSWORD = "pw-of-a-user"
BUCKET = "tools"


class Secured:
    """A secured server with a worker of namespace ``a`` and a reader of ``role``, and their settings."""

    def __init__(self, kind: str, role: Role, private: PrivateServers) -> None:
        self.kind = kind
        self.reader = f"reader-{role.value}"
        self.role = role
        if kind == "etcd":
            self.etcd = private(EtcdServer, auth=True)
        else:
            scopes = {"w-a": Scope(Role.WORKER, "a"), self.reader: Scope(role)}
            entries = [
                authorization_fragment(s, u, bucket=BUCKET, password=PASSWORD) for u, s in scopes.items()
            ]
            config = "authorization {\n users = [\n" + "\n".join(entries) + "\n ]\n}\n"
            self.nats = private(NatsServer, config=config)

    async def setup(self) -> None:
        if self.kind == "etcd":
            root = EtcdStore(
                EtcdSettings.load(
                    endpoints=self.etcd.client_url, auth_username="root", auth_password=self.etcd.password
                )
            )
            try:
                access = EtcdAccess(root.connection)
                await access.apply(Scope(Role.WORKER, "a"), "w-a", password=PASSWORD)
                await access.apply(Scope(self.role), self.reader, password=PASSWORD)
            finally:
                await root.aclose()

    def env(self, user: str) -> dict[str, str]:
        if self.kind == "etcd":
            return {
                "DYN_DISCOVERY_BACKEND": "etcd",
                "ETCD_ENDPOINTS": self.etcd.client_url,
                "ETCD_AUTH_USERNAME": user,
                "ETCD_AUTH_PASSWORD": PASSWORD,
            }
        return {
            "DYN_DISCOVERY_BACKEND": "nats",
            "NATS_SERVER": self.nats.url,
            "NATS_USER": user,
            "NATS_PASSWORD": PASSWORD,
            "NATS_SCOPE": user,
            "NATS_KV_BUCKET": BUCKET,
        }

    def store(self, user: str) -> KeyValueStore:
        if self.kind == "etcd":
            return EtcdStore(
                EtcdSettings.load(endpoints=self.etcd.client_url, auth_username=user, auth_password=PASSWORD)
            )
        return NatsStore(
            NatsSettings.load(
                server=self.nats.url, user=user, password=PASSWORD, scope=user, kv_bucket=BUCKET, timeout=3
            )
        )


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


@asynccontextmanager
async def watching(env: dict[str, str]) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """``dyndisc watch a --json`` in a process of its own; its lines as JSON."""
    process = await anyio.open_process(
        [sys.executable, "-m", "dyndisc", "watch", "a", "--json"], env={**os.environ, **env}
    )
    assert process.stdout is not None
    stdout = process.stdout

    async def lines() -> AsyncIterator[dict[str, Any]]:
        buffer = b""
        while True:
            while b"\n" not in buffer:
                buffer += await stdout.receive()
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)

    try:
        yield lines()
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize("kind", ["etcd", "nats"])
@pytest.mark.parametrize("role", [Role.FRONTEND, Role.OPERATOR])
async def test_list_get_watch_doctor_and_the_ui_work_with_read_only_credentials(
    kind: str, role: Role, dyndisc_private_servers: PrivateServers
) -> None:
    secured = Secured(kind, role, dyndisc_private_servers)
    await secured.setup()
    reader_env = secured.env(secured.reader)
    worker_store, reader_store = secured.store("w-a"), secured.store(secured.reader)
    async with (
        DistributedRuntime(worker_store, lease_ttl=2) as worker,
        KvDiscovery(reader_store, owns_store=False) as reader,
        anyio.create_task_group() as tg,
    ):
        first = await worker.endpoint("a.backend.generate").register("tcp://10.0.0.1:9000", {"model": "m"})
        await worker.register_model(first.endpoint_id, {"display_name": "llama"})

        code, output = await anyio.to_thread.run_sync(cli, reader_env, "list", "--json")
        assert code == 0, output
        assert [json.loads(line)["instance_id"] for line in output.splitlines()] == [f"{first.instance_id:x}"]
        code, output = await anyio.to_thread.run_sync(
            cli, reader_env, "get", f"a.backend.generate/{first.instance_id:x}"
        )
        assert code == 0, output
        assert json.loads(output)["transport"] == "tcp://10.0.0.1:9000"
        code, output = await anyio.to_thread.run_sync(cli, reader_env, "doctor", "--ttl", "2")
        assert code == 0, output
        assert "read-only credentials" in output

        async with watching(reader_env) as lines:
            with anyio.fail_after(30):
                resync = await anext(lines)
                assert resync["event"] == "resync"
                assert [i["instance_id"] for i in resync["instances"]] == [f"{first.instance_id:x}"]
                await worker.endpoint("a.backend.other").register("tcp://10.0.0.1:9001")
                added = await anext(lines)
                assert added["event"] == "added"
                assert added["instance"]["endpoint"] == "a.backend.other"

        address: list[str] = []
        tg.start_soon(lambda: serve(reader, InstanceQuery(), port=0, on_ready=address.append))
        with anyio.fail_after(10):
            while not address:  # noqa: ASYNC110 - the server reports its address through a callback
                await anyio.sleep(0.01)
        async with aiohttp.ClientSession() as client, client.get(address[0] + "events") as stream:
            line = await stream.content.readline()
            snapshot = json.loads(line.decode().removeprefix("data: "))
        assert snapshot["event"] == "snapshot"
        assert sorted(i["endpoint"] for i in snapshot["instances"]) == [
            "a.backend.generate",
            "a.backend.other",
        ]
        assert "llama" in json.dumps(snapshot), "the model card, read from the v1/mdc bucket"
        tg.cancel_scope.cancel()
    await worker_store.aclose()
    await reader_store.aclose()
