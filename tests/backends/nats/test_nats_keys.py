"""The key encoding: reversible, valid NATS KV keys, and prefix filters the server applies correctly."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats_helpers import MakeStore, unique_prefix

from dyndisc.backends.nats.feed import lease_ref_of
from dyndisc.backends.nats.keys import (
    decode_key,
    encode_key,
    is_internal,
    lease_id_of,
    lease_key,
    prefix_filter,
    scope_token,
)
from dyndisc.testing.servers import NatsServer

NATS_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


@given(st.text(max_size=60))
def test_every_key_encodes_to_a_valid_nats_key_and_back(key: str) -> None:
    encoded = encode_key(key)
    assert NATS_KEY.fullmatch(encoded), encoded
    assert not encoded.startswith(".")
    assert not encoded.endswith(".")
    assert ".." not in encoded
    assert "/" not in encoded, "a '/' would collide with the store's own keys"
    assert decode_key(encoded) == key
    assert not is_internal(encoded)


@given(st.text(max_size=30), st.text(max_size=30))
def test_prefix_filter_covers_exactly_the_keys_with_the_prefix(prefix: str, rest: str) -> None:
    key = prefix + rest
    pattern = prefix_filter(prefix)
    assert _subject_matches(pattern, encode_key(key))


def test_examples() -> None:
    assert encode_key("/services/ns/comp/ep/1a") == "=.services.ns.comp.ep.1a"
    assert encode_key("a.b=c/") == "a=2Eb=3Dc.="
    assert prefix_filter("/services/ns/") == "=.services.ns.>"
    assert prefix_filter("/services/n") == "=.services.>"
    assert prefix_filter("") == ">"
    assert decode_key("=41") is None, "only the canonical spelling decodes (two keys never collide)"
    assert decode_key("a..b") is None
    assert decode_key("a.=zz") is None
    assert is_internal(lease_key(0xABC))
    assert decode_key(lease_key(0xABC)) is None


def _subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


@pytest.mark.parametrize(
    "suffix", ["plain", "with.dots", "a=b", "trailing/", "sp ace", "ünïcødé", "x" * 200, "-_", ""]
)
async def test_the_server_stores_and_filters_encoded_keys(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, suffix: str
) -> None:
    store = make_store(dyndisc_nats_server.url, kv_bucket="keys")
    prefix = unique_prefix()
    key = f"{prefix}x/{suffix}"
    await store.put(key, b"v", 0)
    await store.put(f"{prefix}y", b"other", 0)
    assert await store.get_prefix(f"{prefix}x/") == {key: b"v"}
    assert await store.get_prefix(prefix) == {key: b"v", f"{prefix}y": b"other"}
    await store.delete(key)
    assert await store.get_prefix(f"{prefix}x/") == {}


def test_lease_keys_of_a_scope_and_the_lease_a_key_is_joined_to() -> None:
    assert lease_key(0xABC) == "_dyndisc/lease.abc"
    assert lease_key(0xABC, scope_token("w a")) == "_dyndisc/lease.w=20a.abc"
    for key in (lease_key(0xABC), lease_key(0xABC, "w-a")):
        assert is_internal(key)
        assert lease_id_of(key) == 0xABC
        assert decode_key(key) is None
    assert lease_id_of("_dyndisc/lease.w-a.0ABC") == 0, "only the spelling lease_key writes"
    assert lease_id_of("=.services.abc") == 0
    # A key is joined to the lease key its headers name: its scope too, so a key of another scope with the
    # same id (which that scope's credentials could write) is not its lease.
    assert lease_ref_of({"Dyndisc-Lease": "abc"}) == "_dyndisc/lease.abc"
    assert lease_ref_of({"Dyndisc-Lease": "abc", "Dyndisc-Lease-Scope": "w-a"}) == "_dyndisc/lease.w-a.abc"
    assert lease_ref_of({}) == ""
    assert lease_ref_of(None) == ""
