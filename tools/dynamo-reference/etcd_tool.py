"""Look at and write the etcd keys the reference runtime uses; JSON lines on stdout.

Runs in dyndisc's venv (it uses the ``aetcd`` client), not the reference's::

    PY=/work/main/.venv/bin/python
    $PY tools/dynamo-reference/etcd_tool.py --endpoint http://127.0.0.1:2379 watch --prefix v1/
    $PY tools/dynamo-reference/etcd_tool.py dump --prefix v1/
    $PY tools/dynamo-reference/etcd_tool.py leases
    $PY tools/dynamo-reference/etcd_tool.py lease-poll --lease 7daea22df76e3506
    # write KEY=VALUE records under one fresh lease, keep it alive until SIGTERM (then revoke)
    $PY tools/dynamo-reference/etcd_tool.py put-leased --ttl 10 'v1/instances/ns/comp/ep/{lease}={"type":...}'

In ``put-leased`` the text ``{lease}`` in a key or value becomes the lease id in hex and ``{lease_dec}`` in
decimal, so a record can name its own lease as instance id. ``@FILE`` as a value reads it from a file.
SIGTERM/SIGINT revoke the lease (keys vanish at once) unless ``--no-revoke``; SIGUSR1 stops the keep-alive
(the lease then expires after its TTL while the process stays).
``--endpoint`` defaults to ``$ETCD_ENDPOINTS`` (first URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aetcd


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(
        json.dumps({"event": event, "t": round(time.time(), 4), **fields}, ensure_ascii=False) + "\n"
    )
    sys.stdout.flush()


def text(raw: bytes) -> Any:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"hex": raw.hex()}


def client_for(endpoint: str) -> aetcd.Client:
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return aetcd.Client(host=url.hostname or "127.0.0.1", port=url.port or 2379)


async def cmd_dump(etcd: aetcd.Client, args: argparse.Namespace) -> None:
    rows = await etcd.get_prefix(args.prefix.encode())
    for kv in rows:
        emit(
            "kv",
            key=text(kv.key),
            value=text(kv.value),
            lease=kv.lease,
            lease_hex=f"{kv.lease:x}",
            version=kv.version,
            mod_revision=kv.mod_revision,
        )
    emit("dump_done", count=len(rows))


async def cmd_watch(etcd: aetcd.Client, args: argparse.Namespace) -> None:
    rows = await etcd.get_prefix(args.prefix.encode())
    for kv in rows:
        emit("existing", key=text(kv.key), value=text(kv.value), lease=kv.lease, lease_hex=f"{kv.lease:x}")
    watch = await etcd.watch_prefix(args.prefix.encode(), start_revision=rows.header.revision + 1)
    emit("watching", prefix=args.prefix)
    async for event in watch:
        kv = event.kv
        if event.kind == "PUT":
            emit(
                "put",
                key=text(kv.key),
                value=text(kv.value),
                lease=kv.lease,
                lease_hex=f"{kv.lease:x}",
                version=kv.version,
            )
        else:
            emit("delete", key=text(kv.key), revision=kv.mod_revision)


async def cmd_leases(etcd: aetcd.Client, args: argparse.Namespace) -> None:
    reply = await etcd.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest(), metadata=etcd.metadata)
    for lease in reply.leases:
        info = await etcd.get_lease_info(lease.ID, keys=True)
        emit(
            "lease",
            lease=lease.ID,
            lease_hex=f"{lease.ID:x}",
            granted_ttl=info.grantedTTL,
            ttl=info.TTL,
            keys=[text(k) for k in info.keys],
        )
    emit("leases_done", count=len(reply.leases))


async def cmd_lease_poll(etcd: aetcd.Client, args: argparse.Namespace) -> None:
    """Poll a lease's remaining TTL and print every change: shows the holder's keep-alive cadence."""
    lease_id = int(args.lease, 16)
    last = None
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        info = await etcd.get_lease_info(lease_id, keys=False)
        if last != info.TTL:
            emit("lease_ttl", lease_hex=args.lease, ttl=info.TTL, granted_ttl=info.grantedTTL)
            last = info.TTL
            if info.TTL < 0:
                return
        await asyncio.sleep(args.interval)


async def cmd_put_leased(etcd: aetcd.Client, args: argparse.Namespace) -> None:
    lease = await etcd.lease(args.ttl)
    subst = {"{lease}": f"{lease.id:x}", "{lease_dec}": str(lease.id)}

    def fill(s: str) -> str:
        for k, v in subst.items():
            s = s.replace(k, v)
        return s

    written = []
    for item in args.records:
        key, _, value = item.partition("=")
        if value.startswith("@"):
            value = Path(value[1:]).read_text()  # noqa: ASYNC240 (a small local file, before any I/O)
        key, value = fill(key), fill(value)
        await etcd.put(key.encode(), value.encode(), lease=lease.id)
        written.append({"key": key, "value": value})
    emit("leased", lease=lease.id, lease_hex=f"{lease.id:x}", ttl=args.ttl, records=written)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    keepalive = asyncio.Event()
    keepalive.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, keepalive.clear)
    while not stop.is_set():
        if keepalive.is_set():
            await lease.refresh()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(args.ttl / 3, 0.2))
    if args.no_revoke:
        emit("stopped", revoked=False)
        return
    await lease.revoke()
    emit("stopped", revoked=True, lease_hex=f"{lease.id:x}")


async def main() -> int:
    default_ep = (os.environ.get("ETCD_ENDPOINTS") or "http://127.0.0.1:2379").split(",")[0]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=default_ep)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("dump", "watch"):
        s = sub.add_parser(name)
        s.add_argument("--prefix", default="v1/")
    sub.add_parser("leases")
    s = sub.add_parser("lease-poll")
    s.add_argument("--lease", required=True, help="lease id in hex")
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--duration", type=float, default=60.0)
    s = sub.add_parser("put-leased")
    s.add_argument("--ttl", type=int, default=10)
    s.add_argument("--no-revoke", action="store_true")
    s.add_argument("records", nargs="+", metavar="KEY=VALUE")
    args = p.parse_args()
    etcd = client_for(args.endpoint)
    async with etcd:
        await {
            "dump": cmd_dump,
            "watch": cmd_watch,
            "leases": cmd_leases,
            "lease-poll": cmd_lease_poll,
            "put-leased": cmd_put_leased,
        }[args.cmd](etcd, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
