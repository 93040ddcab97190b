"""A process on the file backend, for the multi-process tests (``DYN_FILE_KV`` names the shared root).

``register PATH``  run a runtime, register PATH, print ``{"instance_id": ...}``, run until SIGTERM/SIGINT.
``watch NAMESPACE``  print every discovery event of NAMESPACE as a JSON line, until SIGTERM/SIGINT.
``create KEY``  grant a lease, print ``ready``, wait for a line on stdin, then try to create KEY and print
``{"won": bool, "lease": <our lease>, "holder": <the lease holding KEY>}``; exit at end of stdin.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import anyio

from dyndisc import Added, DistributedRuntime, InstanceQuery, Removed, Resync
from dyndisc.backends.file import from_env


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def until_signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def register(path: str) -> None:
    async with DistributedRuntime.from_env() as runtime:
        instance = await runtime.endpoint(path).register("tcp://127.0.0.1:9000", {"pid": os.getpid()})
        emit(instance_id=instance.instance_id)
        await until_signalled()


async def watch(namespace: str) -> None:
    backend = from_env()
    async with anyio.create_task_group() as tg, backend.watch(InstanceQuery(namespace=namespace)) as events:

        async def stop() -> None:
            await until_signalled()
            tg.cancel_scope.cancel()

        tg.start_soon(stop)
        async for event in events:
            if isinstance(event, Resync):
                emit(event="resync", ids=sorted(i.instance_id for i in event.instances))
            elif isinstance(event, Added):
                emit(event="added", id=event.instance.instance_id)
            elif isinstance(event, Removed):
                emit(event="removed", id=event.instance_id)


async def create(key: str) -> None:
    store = from_env().store
    lease = await store.grant(30)
    emit(event="ready")
    await anyio.to_thread.run_sync(sys.stdin.readline)
    existing = await store.create(key, b"from lease %x" % lease.id, lease.id)
    emit(won=existing is None, lease=lease.id, holder=lease.id if existing is None else existing.lease_id)
    await anyio.to_thread.run_sync(sys.stdin.read)
    await store.revoke(lease.id)


if __name__ == "__main__":
    command, argument = sys.argv[1], sys.argv[2]
    anyio.run({"register": register, "watch": watch, "create": create}[command], argument)
