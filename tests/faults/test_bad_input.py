"""Bad input, fuzzed with hypothesis: clear errors on our side, skip-and-warn on the watcher side.

Scenario 8 of the fault suite. The model-level properties run without a server; the watcher property runs
against every backend harness that can write raw records (see ``tests/harnesses/``).
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Callable

import anyio
import pytest
from faultkit import PROMPT, assert_converged, key_of, unique_namespace, watching
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyndisc import (
    MAX_NAME_LENGTH,
    Added,
    EndpointId,
    Instance,
    InstanceQuery,
    InvalidNameError,
    InvalidRecordError,
    KvDiscovery,
    MemoryStore,
    RecordTooLargeError,
    Resync,
)
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.file import FileStore
from dyndisc.backends.kv import KeyValueStore
from dyndisc.backends.nats import NatsSettings, NatsStore

#: Never in a name: the key separator, the dotted-path separator, control characters and lone surrogates.
FORBIDDEN = {"/", "."} | {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000))}
valid_names = st.text(
    alphabet=st.characters(blacklist_characters="".join(FORBIDDEN)), min_size=1, max_size=MAX_NAME_LENGTH
)


@given(st.text(max_size=200))
def test_any_name_is_either_valid_or_a_clear_error(name: str) -> None:
    try:
        endpoint = EndpointId(namespace=name, component="c", endpoint="e")
    except InvalidNameError as exc:
        assert "namespace" in str(exc)
        assert repr(name) in str(exc)
    else:
        assert endpoint.namespace == name
        assert not set(name) & FORBIDDEN
        assert 1 <= len(name) <= MAX_NAME_LENGTH


@given(valid_names, valid_names, valid_names, st.integers(min_value=0, max_value=2**64 - 1))
def test_every_valid_instance_round_trips_through_its_key_and_record(
    ns: str, comp: str, ep: str, id_: int
) -> None:
    instance = Instance(namespace=ns, component=comp, endpoint=ep, instance_id=id_, transport="tcp://h:1")
    discovery = KvDiscovery(MemoryStore())
    assert discovery.parse(discovery.key_for(instance), instance.to_json()) == instance


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(st.text(max_size=10), json_values | st.builds(object) | st.just(float("nan")), max_size=5)
)
def test_metadata_round_trips_exactly_or_is_refused_before_anything_is_written(
    metadata: dict[str, object],
) -> None:
    try:
        instance = Instance(namespace="n", component="c", endpoint="e", instance_id=1, metadata=metadata)
    except InvalidRecordError as exc:
        assert "JSON" in str(exc) or "Unicode" in str(exc)
        return
    assert instance.metadata == metadata
    assert Instance.from_json(instance.to_json()).metadata == metadata, "every reader sees what was written"


@given(st.integers(min_value=1, max_value=4096))
def test_oversized_metadata_names_the_limit(extra_kib: int) -> None:
    instance = Instance(
        namespace="n",
        component="c",
        endpoint="e",
        instance_id=1,
        metadata={"x": "y" * (extra_kib * 1024 + 65536)},
    )
    with pytest.raises(RecordTooLargeError, match="limit"):
        instance.to_json()


garbage_keys = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + "_-/.", min_size=0, max_size=12),
    min_size=0,
    max_size=6,
).map("/".join)
garbage_values = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {
            "namespace": st.text(max_size=5),
            "component": st.text(max_size=5),
            "endpoint": st.text(max_size=5),
            "instance_id": st.integers(),
        }
    ).map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=garbage_keys, value=garbage_values)
def test_parse_never_raises_on_foreign_records(
    key: str, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    discovery = KvDiscovery(MemoryStore())
    with caplog.at_level(logging.WARNING, logger="dyndisc.kv"):
        found = discovery.parse("/services/" + key, value)
    if found is None:
        assert caplog.records, "a skipped record is reported"
    else:
        assert discovery.key_for(found) == "/services/" + key


async def _watch_survives(samples: list[tuple[str, bytes]]) -> None:
    store = MemoryStore()
    discovery = KvDiscovery(store, owns_store=False)
    lease = await discovery.grant_lease(10)
    good = Instance(namespace="n", component="c", endpoint="e", instance_id=lease.id, transport="tcp://h:1")
    async with discovery.watch(InstanceQuery(namespace="n")) as events:
        assert isinstance(await anext(events), Resync)
        for key, value in samples:
            await store.put("/services/n/" + key, value, 0)
        await discovery.register(good, lease)
        with anyio.fail_after(5):
            async for event in events:
                if isinstance(event, Added) and event.instance == good:
                    break


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(garbage_keys, garbage_values), max_size=30))
def test_a_watch_survives_any_garbage(samples: list[tuple[str, bytes]]) -> None:
    anyio.run(_watch_survives, samples)


# -- foreign records written into real stores ---------------------------------------------------------------


def _real_store(kind: str, request: pytest.FixtureRequest, root: str) -> Callable[[], KeyValueStore]:
    """A factory of new stores on the session's real server (or a file root) for ``kind``."""
    if kind == "etcd":
        url = request.getfixturevalue("dyndisc_etcd_server").client_url
        return lambda: EtcdStore(EtcdSettings.load(endpoints=url, request_timeout_seconds=5.0))
    if kind == "nats":
        url = request.getfixturevalue("dyndisc_nats_server").url
        return lambda: NatsStore(NatsSettings.load(server=url, kv_bucket="dyndisc_faults", timeout=5.0))
    return lambda: FileStore(root)


async def _real_watch_survives(
    make_store: Callable[[], KeyValueStore], samples: list[tuple[str, bytes]]
) -> None:
    """Garbage written by someone else into a real store: every watcher skips it (with a warning), goes on,
    and converges on the one good instance; the writes themselves either succeed or fail clearly."""
    ns = unique_namespace("bad")
    query = InstanceQuery(namespace=ns)
    writer, worker_store = make_store(), make_store()
    backends = [KvDiscovery(make_store()) for _ in range(2)]
    try:
        worker = KvDiscovery(worker_store, owns_store=False)
        lease = await worker.grant_lease(10)
        good = Instance(
            namespace=ns, component="c", endpoint="e", instance_id=lease.id, transport="tcp://h:1"
        )
        async with watching(backends, query) as watchers:
            for key, value in samples:
                try:
                    await writer.put(f"/services/{ns}/{key}", value, 0)
                except ValueError as exc:  # a key the store cannot hold: refused, saying why
                    assert str(exc)
            await worker.register(good, lease)
            fresh = lambda: KvDiscovery(make_store())  # noqa: E731
            await assert_converged(
                watchers, fresh, query, bound=PROMPT, expected=lambda: {key_of(good): good}
            )
        for key in await writer.get_prefix(f"/services/{ns}/"):  # leave the shared server clean
            await writer.delete(key)
        await worker.revoke_lease(lease)
    finally:
        for backend in backends:
            await backend.aclose()
        await writer.aclose()
        await worker_store.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["etcd", "nats", "file"])
def test_a_real_backend_watch_survives_foreign_garbage(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    make_store = _real_store(kind, request, str(tmp_path_factory.mktemp("bad-kv")))

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(garbage_keys, garbage_values), min_size=1, max_size=12))
    def check(samples: list[tuple[str, bytes]]) -> None:
        anyio.run(_real_watch_survives, make_store, samples)

    check()
