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
            "registered_at": None,
        },
        {
            "endpoint": "ns.d.e",
            "instance_id": "cd",
            "transport": None,
            "metadata": {},
            "readiness": "ready",
            "registered_at": None,
        },
    ]


def test_get_one_instance(shared_store: MemoryStore) -> None:
    put(shared_store, A)
    result = CliRunner().invoke(main, ["get", "ns.c.e/ab", "--backend", "memory"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metadata"] == {"m": 1}
    missing = CliRunner().invoke(main, ["get", "ns.c.e/ff", "--backend", "memory"])
    assert missing.exit_code == 1
    assert "no live instance ff of ns.c.e (live: ab)" in missing.output


@pytest.mark.parametrize("args", [["list", "a.b.c.d"], ["get", "ns.c.e/xyz"], ["list", "bad/name"]])
def test_bad_paths_are_usage_errors(args: list[str], shared_store: MemoryStore) -> None:
    result = CliRunner().invoke(main, [*args, "--backend", "memory"])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_unknown_backend_is_refused(where: str) -> None:
    args = ["--backend", "zookeeper", "list"] if where == "before" else ["list", "--backend", "zookeeper"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "etcd" in result.output


def test_the_live_view_keeps_a_removal_on_screen_then_drops_it_and_says_when_stale() -> None:
    from rich.console import Console

    from dyndisc import Added, InstanceQuery, Removed, Resync
    from dyndisc.cli import live
    from dyndisc.cli.output import Style

    class Backend:
        stale_since: float | None = None

    backend = Backend()
    view = live._View(InstanceQuery("ns"), backend)  # type: ignore[arg-type]

    def shown() -> str:
        console = Console(width=200, record=True, color_system=None)
        console.print(view.render(Style(color=False)))
        return console.export_text()

    view.apply(Resync(instances=(A,)))
    view.apply(Added(instance=B))
    assert "1 live" not in shown()
    assert "2 live under ns" in shown()
    view.apply(Removed(A.endpoint_id, A.instance_id))
    text = shown()
    assert "1 live under ns" in text
    assert "ns.c.e" in text
    view.leaving = {k: (i, t - live.LINGER) for k, (i, t) in view.leaving.items()}
    assert "ns.c.e" not in shown()
    backend.stale_since = 0.0
    assert "STALE" in shown()
