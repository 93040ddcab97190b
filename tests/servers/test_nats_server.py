"""Smoke tests: a real nats-server with JetStream: KV round trip, restart keeps the bucket, credentials."""

from __future__ import annotations

from pathlib import Path

import nats
import nats.errors
import pytest

from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import NatsServer, ServerUnavailable
from dyndisc.testing.servers.nats import MIN_NATS_VERSION


@pytest.mark.asyncio
async def test_jetstream_kv_round_trip(dyndisc_nats_server: NatsServer) -> None:
    assert tuple(int(p) for p in dyndisc_nats_server.version.split(".")) >= MIN_NATS_VERSION
    nc = await nats.connect(dyndisc_nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="smoke")
        await kv.put("k", b"v")
        entry = await kv.get("k")
        assert entry.value == b"v"
    finally:
        await nc.close()


@pytest.mark.asyncio
async def test_restart_keeps_bucket_and_port() -> None:
    try:
        server = NatsServer(user="dyndisc", password="pw").start()
    except ServerUnavailable as exc:
        server_unavailable(str(exc))
    try:
        nc = await nats.connect(server.url, user="dyndisc", password="pw")
        kv = await nc.jetstream().create_key_value(bucket="durable")
        await kv.put("k", b"kept")
        await nc.close()

        url = server.url
        server.restart()
        assert server.url == url

        nc = await nats.connect(server.url_with_credentials)
        try:
            entry = await (await nc.jetstream().key_value("durable")).get("k")
            assert entry.value == b"kept"
        finally:
            await nc.close()

        with pytest.raises(nats.errors.Error):
            await nats.connect(server.url, user="dyndisc", password="wrong", allow_reconnect=False)
    finally:
        server.close()


def test_too_old_server_is_refused_clearly(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: v2.10.22'\n")
    fake.chmod(0o755)
    with pytest.raises(ServerUnavailable, match=r"nats-server 2\.10\.22, but dyndisc needs >= 2\.11\.0"):
        NatsServer(binary=fake)
