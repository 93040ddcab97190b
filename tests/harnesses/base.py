"""The interface a backend's conformance harness implements."""

from __future__ import annotations

import abc

from dyndisc import DiscoveryBackend, KvDiscovery, Lease
from dyndisc.backends.kv import KeyValueStore
from dyndisc.testing.servers import TcpProxy


class Harness(abc.ABC):
    """Fresh backends connected to one real server (or store), plus fault hooks for the contract tests.

    Every backend returned by :meth:`new_backend` sees the same data, as separate processes would.
    """

    name: str = "?"
    #: Lease TTL the tests use, in seconds: short, so expiry tests are quick.
    lease_ttl: float = 2.0
    #: Extra seconds beyond the TTL within which a crashed runtime's instances must be reported removed.
    expiry_bound: float = 1.5
    #: Key root the backends write under (``/services`` unless the harness isolates tests another way).
    root: str = "/services"
    #: Features of the contract this backend supports; tests of the others are not collected for it
    #: (``@pytest.mark.contract`` in ``tests/conformance``).
    supports: frozenset[str] = frozenset(
        {
            "raw_write",
            "break_watches",
            "lease_ttl",
            "conflict",
            "new_id_on_lease_loss",
            "lease_time_left",
            "removal_reasons",
        }
    )

    @abc.abstractmethod
    def new_backend(self) -> DiscoveryBackend:
        """A new backend with its own connection; the harness closes it at teardown."""

    async def write_raw(self, key: str, value: bytes) -> None:
        """Write ``value`` at ``key`` directly, as someone else's process would (garbage included)."""
        raise NotImplementedError

    async def break_watches(self) -> None:
        """Break every open watch stream now (events in flight may be lost); watchers must resync."""
        raise NotImplementedError

    async def kill_lease(self, lease: Lease) -> None:
        """Make ``lease`` disappear behind its owner's back (another client revokes it)."""
        async with self.new_backend() as other:
            await other.revoke_lease(lease)

    async def close(self) -> None:  # noqa: B027 - most harnesses hold nothing
        """Release everything."""


class ProxiedStoreHarness(Harness):
    """A key-value backend whose stores under test dial the server through a TCP proxy.

    :meth:`break_watches` therefore really resets their connections (watches must resume or resync);
    raw writes and lease kills go straight to the server from another client, ``direct``.
    """

    def __init__(self, proxy: TcpProxy, direct: KeyValueStore) -> None:
        self.proxy = proxy
        self.direct = direct
        self.stores: list[KeyValueStore] = [direct]

    @abc.abstractmethod
    def store_via_proxy(self) -> KeyValueStore:
        """A new store connected through :attr:`proxy`."""

    def new_backend(self) -> DiscoveryBackend:
        store = self.store_via_proxy()
        self.stores.append(store)
        return KvDiscovery(store, root=self.root)

    async def write_raw(self, key: str, value: bytes) -> None:
        await self.direct.put(key, value, 0)

    async def break_watches(self) -> None:
        self.proxy.cut()
        self.proxy.restore()

    async def kill_lease(self, lease: Lease) -> None:
        await self.direct.revoke(lease.id)

    async def close(self) -> None:
        for store in self.stores:
            await store.aclose()
