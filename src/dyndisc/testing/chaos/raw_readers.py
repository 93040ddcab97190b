"""Raw readers of the real key-value stores: the keys, values and live leases a store holds, read with a
client of the chaos run's own (etcd's gRPC stubs, nats-py, the file system), never through dyndisc's stores.

Each decodes its store's keys from the documented format (``docs/backends/*.md``), not with dyndisc's code:

* **etcd**: keys as they are; a key of an ended lease is gone (etcd deletes it); the leases are
  ``LeaseLeases``;
* **NATS** (a JetStream KV bucket): ``/a/b`` is stored as ``=.a.b`` (``=`` alone: an empty segment; ``=XX``:
  a byte outside ``[A-Za-z0-9_-]``); a key carries its lease in the ``Dyndisc-Lease`` header (hex) and lives
  while the lease key ``_dyndisc/lease.<hex>`` does; a message with ``KV-Operation: DEL|PURGE`` or a
  ``Nats-Marker-Reason`` header is a removal;
* **files**: ``/a/b`` is ``kv/a/b.rec`` (``%`` alone: an empty segment; ``%XX``: an escaped byte), holding
  ``dyndisc-record/1 lease=<hex>\\n`` then the value; a lease is ``leases/<id, 16 hex>.lease`` holding its
  TTL, live while its mtime plus its TTL is in the future.

Every reader returns ``(items, leases)``: the live keys under the prefixes asked, and the live lease ids.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio

RawItems = tuple[dict[str, bytes], set[int]]

# -- etcd ---------------------------------------------------------------------------------------------------


async def read_etcd(
    endpoints: str, prefixes: list[str], credentials: tuple[str, str] | None = None
) -> RawItems:
    """The keys under ``prefixes`` and the leases of the first etcd member of ``endpoints`` (comma-separated
    URLs) that answers; with ``credentials`` (user, password) on a server with auth on."""
    import grpc
    from aetcd import rpc

    last: Exception | None = None
    for url in endpoints.split(","):
        target = url.split("://", 1)[-1].rstrip("/")
        channel = grpc.aio.insecure_channel(target)
        try:
            kv, lease = rpc.KVStub(channel), rpc.LeaseStub(channel)
            items: dict[str, bytes] = {}
            with anyio.fail_after(10):
                token: tuple[tuple[str, str], ...] = ()
                if credentials is not None:
                    name, password = credentials
                    auth = await rpc.AuthStub(channel).Authenticate(
                        rpc.AuthenticateRequest(name=name, password=password), timeout=5
                    )
                    token = (("token", auth.token),)
                for prefix in prefixes:
                    raw = prefix.encode()
                    request = rpc.RangeRequest(key=raw, range_end=_range_end(raw))
                    reply = await kv.Range(request, timeout=5, metadata=token)
                    items.update({bytes(k.key).decode(errors="replace"): bytes(k.value) for k in reply.kvs})
                leases = await lease.LeaseLeases(rpc.LeaseLeasesRequest(), timeout=5, metadata=token)
            return items, {int(found.ID) for found in leases.leases}
        except Exception as exc:  # the next member may answer
            last = exc
        finally:
            await channel.close()
    raise RuntimeError(f"no etcd member of {endpoints} answered: {last}")


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range of every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


# -- NATS ---------------------------------------------------------------------------------------------------
_LEASE_TOKEN = "_dyndisc/lease"


async def read_nats(server: str | list[str], bucket: str, prefixes: list[str]) -> RawItems:
    """The live keys under ``prefixes`` and the live leases of the KV bucket ``bucket`` (``server``: a URL, or
    the URLs of a cluster's servers)."""
    import nats

    nc = await nats.connect(server, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        stream, subjects = f"KV_{bucket}", f"$KV.{bucket}."
        last: dict[str, Any] = {}
        for name in await _nats_subjects(nc, stream, subjects):
            key = _nats_key(name)
            wanted = key is not None and any(key.startswith(p) for p in prefixes)
            if not (wanted or name.startswith(_LEASE_TOKEN + ".")):
                continue
            found = await _last_message(js, stream, subjects + name)
            if found is not None:
                last[name] = found
    finally:
        await nc.close()
    live = {msg: found for msg, found in last.items() if not _nats_removal(found.headers)}
    leases = {int(name.split(".", 1)[1], 16) for name in live if name.startswith(_LEASE_TOKEN + ".")}
    items: dict[str, bytes] = {}
    for name, found in live.items():
        key = _nats_key(name)
        if key is None or not any(key.startswith(p) for p in prefixes):
            continue
        owner = int((found.headers or {}).get("Dyndisc-Lease", "0") or "0", 16)
        if not owner or owner in leases:  # a key lives while its lease key does
            items[key] = bytes(found.data or b"")
    return items, leases


async def _nats_subjects(nc: Any, stream: str, subjects: str) -> list[str]:
    """Every key of the bucket with a message (a value or a removal), from the stream's own count of them,
    answered by its leader (page by page). Not nats-py's ``kv.keys()``: its watcher may end before its first
    key when the consumer's messages are still in flight as it reports nothing pending (nats-io/nats.py#842;
    on a cluster after a failover the truth so read empty), and it finds none given several filters (2.16)."""
    found: dict[str, int] = {}
    while True:
        request = json.dumps({"subjects_filter": subjects + ">", "offset": len(found)}).encode()
        for attempt in range(5):
            try:
                answer = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, 5)).data)
                break
            except TimeoutError:  # nats-py's is one
                if attempt == 4:
                    raise
        if "error" in answer:
            raise RuntimeError(f"stream info of {stream}: {answer['error']}")
        page = answer["state"].get("subjects") or {}
        found.update(page)
        if not page or len(found) >= answer.get("total", 0):
            return [subject[len(subjects) :] for subject in found]


async def _last_message(js: Any, stream: str, subject: str) -> Any:
    """The last message on ``subject`` (``None``: removed since it was listed). A request that times out is
    asked again: reading a key as absent because the server was slow to answer once would make the truth
    wrong (on a loaded machine a lease key read so dropped every key of its lease from it)."""
    from nats.js.errors import NotFoundError

    for attempt in range(5):
        try:
            return await js.get_last_msg(stream, subject)
        except NotFoundError:
            return None
        except TimeoutError:  # nats-py's is one
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _nats_removal(headers: dict[str, str] | None) -> bool:
    return bool(headers) and (
        (headers or {}).get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in (headers or {})
    )


def _nats_key(name: str) -> str | None:
    """The key a NATS KV key stands for, or ``None`` for one no writer of keys could have made."""
    segments = [_unescape(token, "=") for token in name.split(".")]
    return None if any(s is None for s in segments) else "/".join(s for s in segments if s is not None)


# -- files --------------------------------------------------------------------------------------------------
_MAGIC = b"dyndisc-record/1 lease="


async def read_files(root: Path, prefixes: list[str]) -> RawItems:
    """The live records under ``prefixes`` and the live leases of the file store at ``root``."""
    return await anyio.to_thread.run_sync(_read_files, root, prefixes)


def _read_files(root: Path, prefixes: list[str]) -> RawItems:
    now = time.time()
    leases: set[int] = set()
    for path in (root / "leases").glob("*.lease"):
        try:
            ttl = float(json.loads(path.read_bytes())["ttl"])
            if path.stat().st_mtime + ttl > now:
                leases.add(int(path.name[: -len(".lease")], 16))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed meanwhile, or being written
    items: dict[str, bytes] = {}
    kv = root / "kv"
    for directory, _, files in os.walk(kv):
        for name in files:
            if not name.endswith(".rec") or name.startswith("."):
                continue
            path = Path(directory, name)
            parts = [*path.relative_to(kv).parts[:-1], name[: -len(".rec")]]
            segments = [_unescape(p, "%") for p in parts]
            if any(s is None for s in segments):
                continue
            key = "/" + "/".join(s for s in segments if s is not None)
            if not any(key.startswith(p) for p in prefixes):
                continue
            try:
                body = path.read_bytes()
            except OSError:
                continue  # removed meanwhile
            header, _, value = body.partition(b"\n")
            if not header.startswith(_MAGIC):
                items[key] = body  # not a record file: the parser will call it unreadable
                continue
            owner = int(header[len(_MAGIC) :] or b"0", 16)
            if not owner or owner in leases:
                items[key] = value
    return items, leases


# -- segments -----------------------------------------------------------------------------------------------
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _unescape(token: str, escape: str) -> str | None:
    """The segment ``token`` spells (``escape`` alone: empty; ``escape`` + two hex digits: a byte)."""
    if token == escape:
        return ""
    raw = bytearray()
    n = 0
    while n < len(token):
        char = token[n]
        if char == escape:
            hex_ = token[n + 1 : n + 3]
            if len(hex_) != 2 or hex_.upper() != hex_ or any(h not in "0123456789ABCDEF" for h in hex_):
                return None
            raw.append(int(hex_, 16))
            n += 3
        elif char in _PLAIN:
            raw.append(ord(char))
            n += 1
        else:
            return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
