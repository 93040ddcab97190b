"""The metadata store on the command line: ``dyndisc models``, ``channels`` and ``entries`` (list, get,
watch; a table or ``--json``), ids in hex as everywhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from output_lines import Lines

from dyndisc import KvDiscovery, MemoryStore, MetadataEntry, create_backend
from dyndisc._cards import EventChannel, ModelCard, model_card
from dyndisc.cli import main

CARD = ModelCard("ns", "c", "e", 0xAB12, model_card("llama-3-8b"))
LORA = ModelCard("ns", "c", "e", 0xAB12, model_card("llama-3-8b"), lora="sql")
OTHER = ModelCard("other", "c", "e", 0xCD, model_card("qwen"))
CHANNEL = EventChannel(
    "ns", "c", "e", "kv-events", 0x1F, {"kind": "Zmq", "config": {"endpoint": "tcp://h:5557"}}
)
NOTE = MetadataEntry("v1/notes", "team/a", {"owner": "infra", "instance_id": 0xAB12})
JUNK = MetadataEntry("v1/mdc", "ns/c/e/zz", {"type": "NotACard"})


@pytest.fixture
def shared_store() -> Iterator[MemoryStore]:
    previous, MemoryStore._shared = MemoryStore._shared, MemoryStore()
    try:
        yield MemoryStore._shared
    finally:
        MemoryStore._shared = previous


def put(store: MemoryStore, *entries: MetadataEntry) -> None:
    async def write() -> None:
        async with KvDiscovery(store, owns_store=False) as backend:
            for entry in entries:
                await backend.put_entry(entry, None)

    anyio.run(write)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--backend", "memory", "--no-color", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def stored(shared_store: MemoryStore) -> MemoryStore:
    put(shared_store, CARD.to_entry(), LORA.to_entry(), OTHER.to_entry(), CHANNEL.to_entry(), NOTE, JUNK)
    return shared_store


def test_models_as_a_table_and_as_json(stored: MemoryStore) -> None:
    status, out, err = invoke("models", "ns")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ENDPOINT", "ID", "MODEL", "LORA", "TYPE", "INPUT"]
    assert [r.split() for r in rows] == [
        ["ns.c.e", "ab12", "llama-3-8b", "-", "Chat", "Text"],
        ["ns.c.e", "ab12", "llama-3-8b", "sql", "Chat", "Text"],
    ]
    assert "2 model cards in v1/mdc/ns/ (1 other entry there not shown)" in err  # JUNK is no card
    status, out, _ = invoke("models", "--json")
    cards = [json.loads(line) for line in out.splitlines()]
    assert [(c["endpoint"], c["instance_id"], c["model"], c["lora"]) for c in cards] == [
        ("ns.c.e", "ab12", "llama-3-8b", None),
        ("ns.c.e", "ab12", "llama-3-8b", "sql"),
        ("other.c.e", "cd", "qwen", None),
    ]
    assert cards[0]["card"]["display_name"] == "llama-3-8b"


def test_event_channels(stored: MemoryStore) -> None:
    status, out, err = invoke("channels")
    assert status == 0, err
    assert out.splitlines()[1].split() == ["kv-events", "ns.c.e", "1f", "Zmq", "tcp://h:5557"]
    assert "1 event channel in v1/event_channels" in err
    (shaped,) = (json.loads(line) for line in invoke("channels", "ns.c.e", "--json")[1].splitlines())
    assert shaped["publisher_id"] == "1f"
    assert shaped["transport"] == {"kind": "Zmq", "config": {"endpoint": "tcp://h:5557"}}
    assert invoke("channels", "other")[1] == ""


def test_entries_of_any_bucket_list_and_get(stored: MemoryStore) -> None:
    status, out, err = invoke("entries", "v1/notes")
    assert status == 0, err
    assert out.splitlines()[1].split()[:2] == ["team/a", str(len(NOTE.to_json()))]
    assert "1 entry in v1/notes" in err
    status, out, _ = invoke("entries", "v1/notes", "team/a", "--get")
    assert status == 0
    assert json.loads(out) == {"bucket": "v1/notes", "key": "team/a", "value": dict(NOTE.value)}
    status, out, err = invoke("entries", "v1/notes", "team/b", "--get")
    assert status == 1
    assert "no entry 'team/b' in v1/notes" in err
    lines = invoke("entries", "v1/mdc", "ns/", "--json")[1].splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["ns/c/e/ab12", "ns/c/e/ab12/sql", "ns/c/e/zz"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["entries", "not a bucket"], "invalid bucket name"),
        (["entries", "v1/notes", "--get"], "--get needs the entry's key"),
        (["entries", "v1/notes", "k", "--get", "--watch"], "do not go together"),
        (["models", "a.b.c.d"], "Invalid value for PATH"),
    ],
)
def test_mistakes_are_usage_errors(args: list[str], says: str, shared_store: MemoryStore) -> None:
    status, _, err = invoke(*args)
    assert status == 2
    assert says in err


def test_watching_a_bucket_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path))
    env = {**os.environ, "NO_COLOR": "1", "DYN_DISCOVERY_BACKEND": "file"}
    lines = Lines(
        subprocess.Popen(
            [sys.executable, "-m", "dyndisc", "entries", "v1/notes", "--watch", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    )

    async def write(delete: bool) -> None:
        async with create_backend("file") as backend:
            if delete:
                await backend.delete_entry("v1/notes", "team/a")
            else:
                await backend.put_entry(NOTE, None)

    try:
        first = lines.record()  # the watch is established: the snapshot came
        assert (first["event"], first["entries"]) == ("resync", [])
        anyio.run(write, False)
        added = lines.record()
        assert (added["event"], added["entry"]["key"]) == ("added", "team/a")
        assert added["entry"]["value"] == dict(NOTE.value)
        anyio.run(write, True)
        removed = lines.record()
        assert (removed["event"], removed["key"]) == ("removed", "team/a")
    finally:
        lines.close()
