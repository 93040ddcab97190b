"""The key layout + role grants mapping, without a server: every key an API call writes for a namespace lies
inside that namespace's grants and outside every other namespace's, for names made to escape a prefix.

The keys are not computed here: a runtime writes them (a memory store records every key written), so a
layout or an API that writes somewhere new is caught. Each written key is then checked against the grants
three ways: the :class:`Scope` itself, etcd's byte ranges (what etcd compares), and the nats-server subjects
(matched with NATS's wildcard rules, written out below).
"""

from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyndisc import (
    DistributedRuntime,
    DynamoTcp,
    EndpointId,
    EventChannel,
    InstanceQuery,
    KvDiscovery,
    MemoryStore,
)
from dyndisc._errors import ConfigurationError, InvalidNameError
from dyndisc._models import Readiness
from dyndisc._names import is_name
from dyndisc.backends.etcd.roles import Permission
from dyndisc.backends.kv import StoredValue
from dyndisc.backends.kv.layouts import LAYOUT_NAMES, make_layout
from dyndisc.backends.kv.scopes import Grant, Role, Scope, namespace_of, namespace_prefixes
from dyndisc.backends.nats.access import permissions
from dyndisc.backends.nats.keys import encode_key

#: Names made to reach another namespace's keys: prefixes of each other, separators spelled or encoded,
#: wildcards of NATS subjects, the escape characters of the encodings, spaces, non-ASCII.
TRICKY = (
    "a", "a-b", "ab", "a b", "a%2F", "a%2Fb", "a%", "a=2F", "a=2E", "=", "%", "a:", "a+", "a:b", "*", ">",
    "a*", "a>", "ä", "aä", "a\u00a0", " ", "namespace", "component", "topic", "services", "v1", "mdc",
    "instances", "dyndisc_endpoints", "event_channels", "_dyndisc", "-", "_", "A",
)  # fmt: skip
names = st.one_of(
    st.sampled_from(TRICKY),
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/."), min_size=1, max_size=12
    ),
).filter(is_name)
BUCKET = "custom/b"
CARD = {"display_name": "m", "slug": "m"}
ZMQ = {"kind": "Zmq", "config": {"endpoint": "tcp://10.0.0.5:5557"}}


class RecordingStore(MemoryStore):
    """A memory store that remembers every key written or deleted."""

    def __init__(self) -> None:
        super().__init__()
        self.written: set[str] = set()

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        self.written.add(key)
        return await super().create(key, value, lease_id)

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        self.written.add(key)
        await super().put(key, value, lease_id)

    async def delete(self, key: str) -> None:
        self.written.add(key)
        await super().delete(key)


async def keys_written(
    layout: str, namespace: str, component: str, endpoint: str, lora: str, topic: str
) -> set[str]:
    """Every key a runtime writes for ``namespace`` through each writing call of the API."""
    store = RecordingStore()
    async with DistributedRuntime(KvDiscovery(store, layout=layout), lease_ttl=30) as runtime:
        handle = runtime.namespace(namespace).component(component).endpoint(endpoint)
        ident = EndpointId(namespace, component, endpoint)
        await handle.register(DynamoTcp("10.0.0.1", 9000))
        await handle.register(DynamoTcp("10.0.0.1", 9000), readiness=Readiness.DRAINING)
        await handle.register(DynamoTcp("10.0.0.1", 9000))
        await runtime.register_model(ident, CARD)
        await runtime.register_model(ident, CARD, lora=lora)
        channel = await handle.register_event_channel(topic, ZMQ)
        for scoped in (
            EventChannel(namespace, None, None, topic, 7, ZMQ),
            EventChannel(namespace, component, None, topic, 8, ZMQ),
        ):
            await runtime.register_event_channel(scoped)
            await runtime.unregister_event_channel(scoped)
        bucket = runtime.bucket(BUCKET)
        await bucket.put(f"{namespace}/{component}/x", {"a": 1})
        await bucket.put(f"{namespace}/y", {"a": 1}, lease=False)
        await bucket.delete(f"{namespace}/y")
        await runtime.unregister_event_channel(channel)
        await runtime.unregister_model(ident, lora=lora)
        await handle.unregister()
    return store.written


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS's rule: tokens split on '.', '*' matches one token, '>' one or more at the end."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or token not in ("*", given[index]):
            return False
    return len(wanted) == len(given)


def nats_may_publish(scope: Scope, user: str, key: str) -> bool:
    allowed = permissions(scope, user, "b")["publish"]["allow"]
    return any(subject_matches(p, f"$KV.b.{encode_key(key)}") for p in allowed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(LAYOUT_NAMES),
    namespace=names,
    others=st.lists(names, min_size=1, max_size=4),
    component=names,
    endpoint=names,
    lora=names,
    topic=names,
)
def test_every_key_written_for_a_namespace_is_its_own_and_no_other_namespaces(
    layout: str, namespace: str, others: list[str], component: str, endpoint: str, lora: str, topic: str
) -> None:
    written = anyio.run(keys_written, layout, namespace, component, endpoint, lora, topic)
    assert written, "the calls wrote something"
    mine = Scope(Role.WORKER, namespace, buckets=(BUCKET,))
    theirs = [Scope(Role.WORKER, other, buckets=(BUCKET,)) for other in others if other != namespace]
    frontend = Scope(Role.FRONTEND, buckets=(BUCKET,))
    for key in written:
        assert mine.may_write(key), f"{key!r} is outside the grants of namespace {namespace!r}"
        assert namespace_of(key, buckets=(BUCKET,)) == namespace
        # etcd compares bytes against [key, range_end): the same answer as the prefix.
        raw = key.encode()
        assert any(Permission.of(g).covers(raw) and g.write for g in mine.grants())
        assert frontend.may_read(key)
        assert not frontend.may_write(key)
        for other in theirs:
            assert not other.may_write(key), f"{key!r} of {namespace!r} is writable by {other.namespace!r}"
            assert not any(Permission.of(g).covers(raw) for g in other.grants() if g.write)
        if layout == "dyndisc":  # the only layout NATS holds
            assert nats_may_publish(mine, "w", key)
            for other in theirs:
                assert not nats_may_publish(other, "w", key), f"{other.namespace!r} may publish {key!r}"
            assert not nats_may_publish(Scope(Role.FRONTEND), "fe", key)


@settings(max_examples=300, deadline=None)
@given(layout=st.sampled_from(LAYOUT_NAMES), one=names, other=names)
def test_the_prefixes_of_two_namespaces_never_contain_each_other(layout: str, one: str, other: str) -> None:
    if one == other:
        return
    made = make_layout(layout)
    mine = namespace_prefixes(made, one, (BUCKET,))
    theirs = namespace_prefixes(made, other, (BUCKET,))
    for p in mine:
        assert p.endswith("/")
        for q in theirs:
            assert not p.startswith(q), (p, q)
            assert not q.startswith(p), (p, q)


@settings(max_examples=200, deadline=None)
@given(prefix=names, key=st.text(max_size=20))
def test_an_etcd_prefix_permission_covers_exactly_the_keys_with_that_prefix(prefix: str, key: str) -> None:
    grant = Grant(f"/services/{prefix}/", write=True)
    for candidate in (key, grant.prefix + key, grant.prefix[:-1] + key):
        raw = candidate.encode("utf-8", errors="surrogatepass")
        assert Permission.of(grant).covers(raw) == candidate.startswith(grant.prefix)


def test_a_namespace_does_not_cover_one_it_is_a_prefix_of() -> None:
    a = Scope(Role.WORKER, "a")
    assert a.may_write("/services/a/c/e/1f")
    assert not a.may_write("/services/a-b/c/e/1f")
    assert not a.may_write("/services/ab/c/e/1f")
    assert not a.may_write("v1/instances/a-b/c/e/1f")
    assert not a.may_write("v1/event_channels/namespace/a-b/topic/t/1")
    assert not a.may_write("/v1/mdc/a%2Fb/c/e/1")
    assert a.may_write("v1/event_channels/namespace/a/component/c/topic/t/1")
    assert a.may_write("v1/dyndisc_endpoints/a/c/e/1f")
    assert not a.may_write("/services/1f"), "the root itself is no namespace's"
    assert a.may_read("/services/b/c/e/1f")
    assert a.may_read("v1/instances/b/c/e/1f")
    assert not a.may_read("/elsewhere/x")


def test_every_watch_a_reader_makes_is_inside_its_read_grants() -> None:
    frontend = Scope(Role.FRONTEND, buckets=(BUCKET,))
    for layout_name in LAYOUT_NAMES:
        layout = make_layout(layout_name)
        for query in (
            InstanceQuery(),
            InstanceQuery("a"),
            InstanceQuery("a", "c"),
            InstanceQuery("a", "c", "e"),
        ):
            assert frontend.may_read(layout.watch_prefix(query))
            assert frontend.may_read(layout.prefix_for(query))
        for bucket in ("v1/mdc", "v1/event_channels", BUCKET):
            assert frontend.may_read(layout.entry_prefix(bucket))


def test_roles_and_their_names() -> None:
    assert Scope(Role.WORKER, "a").role_name == "dyndisc-worker-a"
    assert Scope(Role.FRONTEND).role_name == "dyndisc-frontend"
    operator = Scope(Role.OPERATOR)
    assert [g.prefix for g in operator.grants()] == [""]
    assert not operator.write_prefixes()
    assert operator.may_read("anything/at/all")
    assert not Scope(Role.FRONTEND).write_prefixes()
    with pytest.raises(ConfigurationError, match="give --namespace"):
        Scope(Role.WORKER)
    with pytest.raises(InvalidNameError):
        Scope(Role.WORKER, "a/b")
    with pytest.raises(InvalidNameError):
        Scope(Role.WORKER, "a.b")
    with pytest.raises(ConfigurationError, match="--bucket 'services'"):
        Scope(Role.WORKER, "a", buckets=("services",))


def test_namespace_of_keys_of_no_namespace() -> None:
    assert namespace_of("/services/a/c/e/1") == "a"
    assert namespace_of("v1/event_channels/namespace/a%20b/topic/t/1") == "a b"
    assert namespace_of("v1/event_channels/namespace/a%2g/topic/t/1") is None, "not an encoding we write"
    assert namespace_of("/elsewhere/a/b") is None
    assert namespace_of("/services/") is None
