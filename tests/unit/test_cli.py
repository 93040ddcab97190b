"""The ``dyndisc`` command line, on the process-wide memory store."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest
from click.testing import CliRunner

from dyndisc import Instance, KvDiscovery, MemoryStore
from dyndisc.cli import main


@pytest.fixture
def shared_store() -> Iterator[MemoryStore]:
    previous, MemoryStore._shared = MemoryStore._shared, MemoryStore()
    try:
        yield MemoryStore._shared
    finally:
        MemoryStore._shared = previous


def put(store: MemoryStore, *instances: Instance) -> None:
    discovery = KvDiscovery(store, owns_store=False)

    async def write() -> None:
        for instance in instances:
            await store.put(discovery.key_for(instance), instance.to_json(), 0)

    anyio.run(write)


A = Instance(
    namespace="ns", component="c", endpoint="e", instance_id=0xAB, transport="tcp://h:1", metadata={"m": 1}
)
B = Instance(namespace="ns", component="d", endpoint="e", instance_id=0xCD)


def test_list_as_table_and_json(shared_store: MemoryStore) -> None:
    put(shared_store, A, B)
    runner = CliRunner()
    table = runner.invoke(main, ["list", "ns.c", "--backend", "memory"])
    assert table.exit_code == 0, table.output
    assert "ns.c.e" in table.output
    assert "tcp://h:1" in table.output
    assert "ns.d.e" not in table.output
    as_json = runner.invoke(main, ["list", "--json", "--backend", "mem"])
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {
            "endpoint": "ns.c.e",
            "instance_id": "ab",
            "transport": "tcp://h:1",
            "metadata": {"m": 1},
            "readiness": "ready",
        },
        {"endpoint": "ns.d.e", "instance_id": "cd", "transport": None, "metadata": {}, "readiness": "ready"},
    ]


def test_get_one_instance(shared_store: MemoryStore) -> None:
    put(shared_store, A)
    result = CliRunner().invoke(main, ["get", "ns.c.e/ab", "--backend", "memory"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metadata"] == {"m": 1}
    missing = CliRunner().invoke(main, ["get", "ns.c.e/ff", "--backend", "memory"])
    assert missing.exit_code == 1
    assert "no live instance ff of ns.c.e" in missing.output


@pytest.mark.parametrize("args", [["list", "a.b.c.d"], ["get", "ns.c.e/xyz"], ["list", "bad/name"]])
def test_bad_paths_are_usage_errors(args: list[str], shared_store: MemoryStore) -> None:
    result = CliRunner().invoke(main, [*args, "--backend", "memory"])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_unknown_backend_is_refused() -> None:
    result = CliRunner().invoke(main, ["list", "--backend", "zookeeper"])
    assert result.exit_code == 2
    assert "etcd" in result.output
