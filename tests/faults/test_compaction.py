"""Scenario 2: watchers cut off (through the TCP proxy) while keys change and etcd is compacted past their
revision. Resuming is impossible (the history is gone), so each must relist and converge. Lease TTL 2 s."""

from __future__ import annotations

import time

from fault_targets import MakeTarget
from faultkit import PROMPT, assert_converged, registrations, unique_namespace, watching

from dyndisc import InstanceQuery, KvDiscovery
from dyndisc.backends.etcd import EtcdStore
from dyndisc.testing.servers import EtcdServer


async def test_watchers_cut_off_past_a_compaction_relist_and_converge(make_target: MakeTarget) -> None:
    target = make_target("etcd", private_server=True)  # a private etcd: compaction is global
    server = target.server
    assert isinstance(server, EtcdServer)
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    hosts = [await target.start() for _ in range(3)]  # staying, leaving, crashing; lease TTL 2 s
    for n, host in enumerate(hosts):
        for ep in ("a", "b"):
            await host.runtime.endpoint(f"{ns}.w.{ep}").register(f"tcp://10.0.0.{n}:1")
    watcher_backends = [target.backend(via_proxy=True) for _ in range(3)]
    live = lambda: registrations([h.runtime for h in hosts if not h.done], query)  # noqa: E731

    async with watching(watcher_backends, query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        target.proxy.cut()  # stays cut: no watcher can reconnect until restore()
        await hosts[0].runtime.endpoint(f"{ns}.w.a").unregister()
        await hosts[0].runtime.endpoint(f"{ns}.w.c").register("tcp://10.0.0.0:2")
        await hosts[0].runtime.endpoint(f"{ns}.w.b").register("tcp://10.0.0.0:3", {"changed": True})
        await hosts[1].stop()  # a clean exit: its lease is revoked
        await hosts[2].crash()  # a crash: its lease expires after the TTL
        late = await target.start()
        hosts.append(late)
        await late.runtime.endpoint(f"{ns}.w.a").register("tcp://10.0.0.9:1")
        # Wait for the crashed worker's lease to expire, then compact everything the watchers missed.
        await assert_converged([], target.fresh, query, bound=target.ttl + target.bound, expected=live)
        compacted = server.compact()
        target.proxy.restore()
        healed = time.monotonic()
        await assert_converged(watchers, target.fresh, query, bound=PROMPT * 2, expected=live)
        took = time.monotonic() - healed
        for backend in watcher_backends:
            assert isinstance(backend, KvDiscovery)
            assert isinstance(backend.store, EtcdStore)
            assert backend.store._watches[f"/services/{ns}/"].relists >= 1, "the history was gone: a relist"
        assert all(w.resyncs >= 2 for w in watchers), "each watcher was told with a fresh Resync"
    print(
        f"etcd compacted to revision {compacted} while cut off: "
        f"3 watchers relisted and converged in {took:.2f}s"
    )
