"""The raw clients: leased puts and a prefix watch on each store, with nothing of dyndisc on top.

They are the limit a backend is compared with (ratio = ours / raw), so each does the least the store allows:
no validation, no retries, no JSON. Keys are ``(namespace, n)``; every client maps them to its store's
spelling.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from dyndisc.backends.kv import KeyValueStore, StorePut

VALUE = b'{"transport":"tcp://127.0.0.1:1"}'


class RawClient(abc.ABC):
    """Leased puts and a watch of one namespace's keys, straight on the store's own client."""

    @abc.abstractmethod
    async def grant(self, ttl: float) -> int:
        """A lease (0 where the store has none); puts under it vanish when it expires."""

    @abc.abstractmethod
    async def put(self, ns: str, n: int, lease_id: int) -> None:
        """Write key ``n`` of ``ns`` under ``lease_id``."""

    @abc.abstractmethod
    def watch_puts(self, ns: str) -> AbstractAsyncContextManager[AsyncIterator[int]]:
        """The ``n`` of every key put under ``ns``, as they arrive (established when entered)."""

    async def snapshot(self, prefix: str) -> dict[Any, Any]:
        """Every key under ``prefix`` and its value, with a watch of the prefix established from there: what a
        watcher needs before its first event (the raw side of a first snapshot)."""
        raise NotImplementedError

    async def aclose(self) -> None:  # noqa: B027 - most raw clients hold nothing
        """Release the client."""


class StoreRawClient(RawClient):
    """A :class:`KeyValueStore` used directly: for memory, the limit dyndisc's own layers can approach."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def grant(self, ttl: float) -> int:
        return (await self.store.grant(ttl)).id

    async def put(self, ns: str, n: int, lease_id: int) -> None:
        await self.store.put(f"/raw/{ns}/{n}", VALUE, lease_id)

    async def snapshot(self, prefix: str) -> dict[Any, Any]:
        return await self.store.get_prefix(prefix)

    @asynccontextmanager
    async def watch_puts(self, ns: str) -> AsyncIterator[AsyncIterator[int]]:
        prefix = f"/raw/{ns}/"
        async with self.store.watch(prefix) as events:
            await anext(events)  # the initial snapshot: the watch is established

            async def keys() -> AsyncIterator[int]:
                async for event in events:
                    if isinstance(event, StorePut):
                        yield int(event.key[len(prefix) :])

            yield keys()


class EtcdRawClient(RawClient):
    """aetcd's generated gRPC stubs on one grpc.aio channel: LeaseGrant, leased Put, one Watch stream."""

    def __init__(self, address: str) -> None:
        from aetcd import rpc

        self.rpc = rpc
        # A large prefix is one large answer: lift gRPC's 4 MiB cap, as dyndisc's channels do.
        options = [("grpc.max_receive_message_length", 2**31 - 1)]
        self.channel = rpc.insecure_channel(address, options=options)
        # The watcher has a channel of its own, as another process would (dyndisc's watcher does too).
        self.watch_channel = rpc.insecure_channel(address, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.watch_channel)

    async def grant(self, ttl: float) -> int:
        reply = await self.lease.LeaseGrant(self.rpc.LeaseGrantRequest(TTL=max(1, round(ttl))))
        return int(reply.ID)

    async def put(self, ns: str, n: int, lease_id: int) -> None:
        put = self.rpc.PutRequest(key=f"/raw/{ns}/{n}".encode(), value=VALUE, lease=lease_id)
        # A transaction holding the one leased put, the fastest leased write etcd 3.5 has: it serves a
        # leased Put request 3-4 times slower (measured here), and the limit must be the fastest way.
        await self.kv.Txn(self.rpc.TxnRequest(success=[self.rpc.RequestOp(request_put=put)]))

    @asynccontextmanager
    async def watch_puts(self, ns: str) -> AsyncIterator[AsyncIterator[int]]:
        from aetcd.utils import prefix_range_end

        prefix = f"/raw/{ns}/".encode()
        call = self.watch.Watch()
        try:
            create = self.rpc.WatchCreateRequest(key=prefix, range_end=prefix_range_end(prefix))
            await call.write(self.rpc.WatchRequest(create_request=create))
            reply = await call.read()
            assert reply.created, reply

            async def keys() -> AsyncIterator[int]:
                while True:
                    reply = await call.read()
                    for event in reply.events:
                        if event.type == 0:  # PUT
                            yield int(event.kv.key[len(prefix) :])

            yield keys()
        finally:
            call.cancel()

    async def snapshot(self, prefix: str) -> dict[Any, Any]:
        from aetcd.utils import prefix_range_end

        key = prefix.encode()
        reply = await self.kv.Range(self.rpc.RangeRequest(key=key, range_end=prefix_range_end(key)))
        items = {bytes(kv.key): bytes(kv.value) for kv in reply.kvs}
        call = self.watch.Watch()
        try:
            create = self.rpc.WatchCreateRequest(
                key=key, range_end=prefix_range_end(key), start_revision=reply.header.revision + 1
            )
            await call.write(self.rpc.WatchRequest(create_request=create))
            assert (await call.read()).created
        finally:
            call.cancel()
        return items

    async def aclose(self) -> None:
        await self.channel.close()
        await self.watch_channel.close()


class NatsRawClient(RawClient):
    """nats-py's JetStream KV on the backend's bucket: ``create`` with a per-key TTL, ``watch`` of keys."""

    def __init__(self, url: str, bucket: str) -> None:
        self.url = url
        self.bucket = bucket
        self.connections: list[Any] = []
        self.kv: Any = None

    async def _open(self) -> Any:
        import nats

        nc = await nats.connect(self.url)
        self.connections.append(nc)
        return await nc.jetstream().key_value(self.bucket)

    async def _kv(self) -> Any:
        if self.kv is None:
            self.kv = await self._open()
        return self.kv

    async def grant(self, ttl: float) -> int:
        self.ttl = max(1, round(ttl))  # NATS has no leases: the TTL goes on every key
        return 0

    async def put(self, ns: str, n: int, lease_id: int) -> None:
        await (await self._kv()).create(f"raw.{ns}.{n}", VALUE, msg_ttl=self.ttl)

    @asynccontextmanager
    async def watch_puts(self, ns: str) -> AsyncIterator[AsyncIterator[int]]:
        # The watcher has a connection of its own, as another process would.
        watcher = await (await self._open()).watch(f"raw.{ns}.>")
        try:
            with anyio.fail_after(10):
                while await watcher.updates(timeout=10) is not None:  # None marks the end of the history
                    pass
            skip = len(f"raw.{ns}.")

            async def keys() -> AsyncIterator[int]:
                while True:
                    entry = await watcher.updates(timeout=60)
                    if entry is not None and entry.operation is None:
                        yield int(entry.key[skip:])

            yield keys()
        finally:
            await watcher.stop()

    async def aclose(self) -> None:
        for nc in self.connections:
            await nc.close()


class FileRawClient(RawClient):
    """Plain files (write a temp file, rename it into place) and inotify through watchfiles' RustNotify,
    with the file backend's own debounce and step, so the two differ only by dyndisc's work."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def grant(self, ttl: float) -> int:
        return 0  # plain files have no leases

    async def put(self, ns: str, n: int, lease_id: int) -> None:
        directory = self.root / ns
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f".tmp-{n}"
        # Blocking writes in the event loop, as the limit: a few microseconds on a local disk.
        with open(temp, "wb") as out:  # noqa: ASYNC230
            out.write(VALUE)
        os.replace(temp, directory / str(n))

    @asynccontextmanager
    async def watch_puts(self, ns: str) -> AsyncIterator[AsyncIterator[int]]:
        from watchfiles._rust_notify import RustNotify

        from dyndisc.backends.file.changes import DEBOUNCE_MS, STEP_MS

        directory = self.root / ns
        directory.mkdir(parents=True, exist_ok=True)
        notify = RustNotify([str(directory)], False, False, 50, True, True)
        stop = threading.Event()
        limiter = anyio.CapacityLimiter(1)
        seen: set[int] = set()

        async def keys() -> AsyncIterator[int]:
            while True:
                changes = await anyio.to_thread.run_sync(
                    notify.watch, DEBOUNCE_MS, STEP_MS, 0, stop, limiter=limiter
                )
                if not isinstance(changes, set):
                    return
                for _, path in sorted(changes, key=lambda c: c[1]):
                    name = os.path.basename(path)
                    if name.isdigit() and int(name) not in seen:
                        seen.add(int(name))
                        yield int(name)

        try:
            yield keys()
        finally:
            stop.set()
            notify.close()
