"""The key encoding: reversible, valid NATS KV keys, and prefix filters the server applies correctly."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats_helpers import MakeStore, unique_prefix

from dyndisc.backends.nats.keys import decode_key, encode_key, is_internal, lease_key, prefix_filter
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
