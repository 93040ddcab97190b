"""NatsStore writes: what a user relies on that the other NATS tests leave unchecked.

A delete is unconditional, as etcd's is. NATS KV has no "delete whatever is there", so the store reads the key
and deletes the revision it read; when another client rewrote the key in between, that conditional delete is
refused, and the store reads again and deletes the rewrite. A delete that returns has deleted: the key's last
message is a deletion marker, which every watcher hears (a delete giving up on its first refusal would leave
the rewrite in place with nothing in the bucket saying the delete ever happened). One that another client
keeps beating gives up and says so.

What the store wrote is read back raw, with nats-py, never through dyndisc (whose readers hide, and purge,
what they find orphaned).
"""

from __future__ import annotations

import pytest
from nats.js import api
from nats_helpers import MakeStore, raw_bucket, unique_prefix

from dyndisc import BackendUnavailableError
from dyndisc.backends.nats.feed import KV_OPERATION
from dyndisc.backends.nats.keys import encode_key
from dyndisc.testing.servers import NatsServer


async def test_a_delete_that_another_client_beat_to_the_key_deletes_its_rewrite_too(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another client rewrites the key between the delete's read and its conditional delete (no sleep: the
    # rewrite is made, and has landed, before the read returns to the store).
    deleter, writer = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    await deleter.put(key, b"1", 0)
    get = deleter.connection.get
    rewrites: list[int] = []  # the revision of the rewrite

    async def rewritten_after_the_read(nats_key: str) -> api.RawStreamMsg | None:
        found = await get(nats_key)
        if nats_key == encode_key(key) and not rewrites:
            await writer.put(key, b"2", 0)
            rewrite = await writer.connection.get(nats_key)
            assert rewrite is not None
            assert (found.data if found else None, rewrite.data) == (b"1", b"2")
            rewrites.append(int(rewrite.seq or 0))
        return found

    monkeypatch.setattr(deleter.connection, "get", rewritten_after_the_read)
    await deleter.delete(key)
    assert rewrites, "the delete read the key"
    async with raw_bucket(dyndisc_nats_server, deleter.bucket) as raw:
        found = await raw.last(encode_key(key))
    assert found is not None
    assert (found.headers or {}).get(KV_OPERATION) == "DEL", (found.data, found.headers)
    assert int(found.seq or 0) > rewrites[0], "deleted after the rewrite"
    assert await writer.get_prefix(key) == {}


async def test_a_delete_that_another_client_keeps_beating_says_so_and_leaves_nothing_half_done(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewritten between every read and every conditional delete, the delete gives up and says so (as a
    create does), rather than return as if the key were gone: an unregistration must not believe it."""
    deleter, writer = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    await deleter.put(key, b"0", 0)
    get = deleter.connection.get
    rewrites = 0

    async def rewritten_after_every_read(nats_key: str) -> api.RawStreamMsg | None:
        nonlocal rewrites
        found = await get(nats_key)
        if nats_key == encode_key(key):
            rewrites += 1
            await writer.put(key, str(rewrites).encode(), 0)
        return found

    monkeypatch.setattr(deleter.connection, "get", rewritten_after_every_read)
    with pytest.raises(BackendUnavailableError, match="kept changing under us"):
        await deleter.delete(key)
    assert await writer.get_prefix(key) == {key: str(rewrites).encode()}, "the last rewrite stands"
