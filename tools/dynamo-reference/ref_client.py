"""A reference (NVIDIA Dynamo 1.6.1) client of ``ns.comp.ep``: report its instance set, or call one instance.

Run with the reference venv's python (``install.sh`` prints it)::

    # print the instance set on every change until killed
    $REFPY tools/dynamo-reference/ref_client.py --backend etcd --endpoint ns.comp.ep
    # wait for instance 0x1a2b (up to --wait seconds), send one request with client.direct, report the outcome
    $REFPY tools/dynamo-reference/ref_client.py --backend etcd --endpoint ns.comp.ep --call 1a2b

Backend selection as for ``ref_worker.py`` (``ETCD_ENDPOINTS``, ``DYN_FILE_KV``, kubeconfig + ``POD_*``).

Stdout, one JSON object per line:

- ``client_ready``: the client exists (``connection_id`` of this process, ``id_hex``);
- ``instances``: on start and on every change of ``client.instance_ids()`` / ``client.instances()``,
  with ``ids`` (sorted ints), ``ids_hex`` and ``instances`` (``transport.kind``/``address``, ``device_type``);
- with ``--call ID``: ``call_target`` (seen or ``not_listed`` after ``--wait``), then ``call_ok`` with the
  responses, or ``call_error`` with the exception's type and exact text, or ``call_timeout``; then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from typing import Any

from _common import (
    BACKENDS,
    apply_loopback_env,
    backend_env,
    emit,
    hard_exit,
    install_stop_signals,
    instance_view,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default=os.environ.get("DYN_DISCOVERY_BACKEND", "etcd"))
    p.add_argument(
        "--endpoint", default="ns.comp.ep", help="namespace.component.endpoint (default ns.comp.ep)"
    )
    p.add_argument("--interval", type=float, default=0.1, help="poll period in seconds (default 0.1)")
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop watching after this many seconds (0: never)"
    )
    p.add_argument(
        "--call", metavar="ID", help="instance id to call once with client.direct (hex, or 0d<decimal>)"
    )
    p.add_argument("--wait", type=float, default=10.0, help="--call: seconds to wait for the id to be listed")
    p.add_argument("--timeout", type=float, default=10.0, help="--call: seconds to wait for the call itself")
    p.add_argument("--payload", default='{"ping": 1}', help="--call: JSON request body")
    p.add_argument(
        "--force",
        action="store_true",
        help="--call: send even if the id never appeared in instance_ids() (to see the client's error)",
    )
    return p.parse_args()


def parse_id(text: str) -> int:
    return int(text[2:], 10) if text.startswith("0d") else int(text.removeprefix("0x"), 16)


def snapshot(client: Any) -> tuple[list[int], list[dict[str, Any]]]:
    ids = sorted(client.instance_ids())
    views = sorted((instance_view(i) for i in client.instances()), key=lambda v: v["instance_id"])
    return ids, views


async def main() -> int:
    args = parse_args()
    apply_loopback_env()
    os.environ["DYN_DISCOVERY_BACKEND"] = args.backend

    import json

    from dynamo.runtime import DistributedRuntime

    loop = asyncio.get_running_loop()
    stop = install_stop_signals(loop)
    runtime = DistributedRuntime(loop, args.backend, "tcp")
    endpoint = runtime.endpoint(args.endpoint)
    client = await endpoint.client()
    own = endpoint.connection_id()
    emit(
        "client_ready",
        endpoint=args.endpoint,
        backend=args.backend,
        connection_id=own,
        id_hex=f"{own:x}",
        pid=os.getpid(),
        env=backend_env(args.backend),
    )

    last: Any = None
    started = time.monotonic()
    target = parse_id(args.call) if args.call else None
    while not stop.is_set():
        ids, views = snapshot(client)
        if (ids, views) != last:
            last = (ids, views)
            emit("instances", ids=ids, ids_hex=[f"{i:x}" for i in ids], instances=views)
        elapsed = time.monotonic() - started
        if target is not None and (target in ids or elapsed >= args.wait):
            break
        if args.duration and elapsed >= args.duration:
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.interval)

    if target is not None and not stop.is_set():
        listed = target in client.instance_ids()
        emit("call_target", instance_id=target, id_hex=f"{target:x}", listed=listed)
        if listed or args.force:
            await call(client, target, json.loads(args.payload), args.timeout)
    runtime.shutdown()
    await asyncio.sleep(0.3)  # let the runtime revoke its etcd lease / delete its files
    emit("stopped")
    hard_exit(0)
    return 0


async def call(client: Any, target: int, payload: Any, timeout: float) -> None:
    async def run() -> list[Any]:
        responses = []
        stream = await client.direct(payload, target)
        async for item in stream:
            data = item.data() if hasattr(item, "data") else item
            responses.append(data)
        return responses

    try:
        responses = await asyncio.wait_for(run(), timeout=timeout)
    except TimeoutError:
        emit("call_timeout", instance_id=target, timeout=timeout)
    except Exception as exc:
        emit("call_error", instance_id=target, type=type(exc).__name__, error=str(exc))
    else:
        emit("call_ok", instance_id=target, responses=responses)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
