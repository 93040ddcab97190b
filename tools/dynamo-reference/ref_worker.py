"""A reference (NVIDIA Dynamo 1.6.1) worker: serve ``ns.comp.ep`` on a chosen discovery backend.

Run with the reference venv's python (``install.sh`` prints it)::

    $REFPY tools/dynamo-reference/ref_worker.py --backend etcd --endpoint ns.comp.ep
    $REFPY tools/dynamo-reference/ref_worker.py --backend file --endpoint ns.comp.ep --model-name tiny \\
        --model-path ~/.cache/dyndisc/dynamo-1.6.1/model

Backend configuration comes from the reference's own environment: ``ETCD_ENDPOINTS`` (and
``ETCD_LEASE_TTL``) for etcd, ``DYN_FILE_KV`` for the file store, ``KUBECONFIG`` + ``POD_NAME`` /
``POD_NAMESPACE`` / ``POD_UID`` for kubernetes. Loopback defaults for every socket are applied (see
``_common.LOOPBACK_ENV``).

Stdout, one JSON object per line:

- ``started``: ``connection_id`` (int), ``id_hex``, backend, pid;
- ``serving``: the endpoint and the keys this worker is expected to have written (``expected_keys``; on
  kubernetes ``expected_cr_entries``: the ``spec.data`` map keys of the pod's DynamoWorkerMetadata);
  for the file store also every file in the store (``files``: path, decoded key, ``own``, mode, size);
- ``model_registered`` / ``model_error`` (with ``--model-name``);
- ``event_channel_registered`` / ``event_channel_error`` (with ``--event-channel``);
- ``request``: each request the handler saw; ``unregistered`` / ``registered`` (SIGUSR1 / SIGUSR2);
- ``signal``, then ``stopped`` (after ``rt.shutdown()`` on SIGTERM/SIGINT, unless ``--on-stop exit``).

SIGTERM/SIGINT: ``--on-stop shutdown`` (default) calls ``rt.shutdown()`` (revokes the etcd lease / deletes
owned files) and exits 0; ``--on-stop exit`` leaves at once without it, like a crash that still flushes
stdout. SIGKILL is the test's own business. SIGUSR1 unregisters the endpoint instance, SIGUSR2 registers
it again (``unregister_endpoint_instance`` / ``register_endpoint_instance``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from _common import BACKENDS, apply_loopback_env, backend_env, emit, hard_exit, install_stop_signals


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default=os.environ.get("DYN_DISCOVERY_BACKEND", "etcd"))
    p.add_argument(
        "--endpoint", default="ns.comp.ep", help="namespace.component.endpoint (default ns.comp.ep)"
    )
    p.add_argument("--model-name", help="also register a model card (register_model) under this name")
    p.add_argument("--model-path", help="local model folder for --model-name (see model/build_model.py)")
    p.add_argument(
        "--model-type",
        default="chat",
        choices=("chat", "completions", "chat+completions"),
        help="ModelType of the card (default chat)",
    )
    p.add_argument(
        "--minimal-card",
        action="store_true",
        help="register_model(..., skip_model_assets=True): a card without tokenizer/config files",
    )
    p.add_argument(
        "--event-channel",
        choices=("kv", "metrics"),
        help="also start an event publisher that registers an event channel (KvEventPublisher or "
        "WorkerMetricsPublisher)",
    )
    p.add_argument("--on-stop", choices=("shutdown", "exit"), default="shutdown")
    return p.parse_args()


def expected_keys(namespace: str, component: str, endpoint: str, id_hex: str, model: bool) -> list[str]:
    keys = [f"v1/instances/{namespace}/{component}/{endpoint}/{id_hex}"]
    if model:
        keys.append(f"v1/mdc/{namespace}/{component}/{endpoint}/{id_hex}")
    return keys


def store_files(id_hex: str) -> list[dict[str, Any]]:
    """Every file under ``$DYN_FILE_KV`` (default ``$TMPDIR/dynamo_store_kv``) with its decoded key;
    ``own`` marks those whose key ends with this worker's id (event channels use their publisher id)."""
    root = Path(os.environ.get("DYN_FILE_KV") or Path(os.environ.get("TMPDIR", "/tmp")) / "dynamo_store_kv")
    found: list[dict[str, Any]] = []
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".tmp_"):
            continue
        key = f"{path.parent.relative_to(root)}/{urllib.parse.unquote(path.name)}"
        st = path.stat()
        found.append(
            {
                "path": str(path.relative_to(root)),
                "key": key,
                "own": key.endswith("/" + id_hex),
                "mode": oct(st.st_mode & 0o7777),
                "size": st.st_size,
            }
        )
    return found


async def main() -> int:
    args = parse_args()
    apply_loopback_env()
    os.environ["DYN_DISCOVERY_BACKEND"] = args.backend

    from dynamo.runtime import DistributedRuntime  # after the environment is final

    loop = asyncio.get_running_loop()
    stop = install_stop_signals(loop)
    runtime = DistributedRuntime(loop, args.backend, "tcp")
    endpoint = runtime.endpoint(args.endpoint)
    connection_id = endpoint.connection_id()
    id_hex = f"{connection_id:x}"
    namespace, component, ep_name = args.endpoint.removeprefix("dyn://").split(".", 2)
    emit(
        "started",
        connection_id=connection_id,
        id_hex=id_hex,
        backend=args.backend,
        pid=os.getpid(),
        endpoint=args.endpoint,
        env=backend_env(args.backend),
    )

    async def handler(request: Any, context: Any = None) -> AsyncIterator[Any]:
        emit("request", request=request)
        yield {"echo": request, "instance_id": connection_id}

    serve = asyncio.ensure_future(endpoint.serve_endpoint(handler))
    # serve_endpoint registers, then resolves only when the endpoint stops; give it a moment to fail fast.
    done, _ = await asyncio.wait({serve}, timeout=0.5)
    if serve in done and serve.exception() is not None:
        emit("serve_error", error=str(serve.exception()), type=type(serve.exception()).__name__)
        hard_exit(1)

    model = False
    if args.model_name:
        model = await register_card(args, endpoint)

    if args.event_channel:
        await start_event_channel(args.event_channel, endpoint, connection_id)

    keys = expected_keys(namespace, component, ep_name, id_hex, model)
    serving: dict[str, Any] = {"endpoint": args.endpoint}
    if args.backend == "kubernetes":
        # No keys: entries of the DynamoWorkerMetadata named after the pod, under spec.data.
        serving["expected_cr_entries"] = {
            "name": os.environ.get("POD_NAME"),
            "endpoints": [keys[0].removeprefix("v1/instances/")],
            "model_cards": [k.removeprefix("v1/mdc/") for k in keys[1:]],
        }
    else:
        serving["expected_keys"] = keys
    if args.backend == "file":
        serving["files"] = store_files(id_hex)
    emit("serving", **serving)

    def toggle(register: bool) -> None:
        async def run() -> None:
            try:
                if register:
                    await endpoint.register_endpoint_instance()
                else:
                    await endpoint.unregister_endpoint_instance()
                emit("registered" if register else "unregistered")
            except Exception as exc:  # report, keep serving
                emit("toggle_error", register=register, error=str(exc), type=type(exc).__name__)

        _keep.append(asyncio.ensure_future(run()))

    loop.add_signal_handler(signal.SIGUSR1, toggle, False)
    loop.add_signal_handler(signal.SIGUSR2, toggle, True)

    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({serve, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if serve.done() and not waiter.done():
        exc = serve.exception()
        emit("serve_ended", error=str(exc) if exc else None)
        hard_exit(1 if exc else 0)
    if args.on_stop == "exit":
        emit("stopped", how="exit")
        hard_exit(0)
    runtime.shutdown()
    try:
        await asyncio.wait_for(serve, timeout=10)
    except Exception as exc:  # the serve future may end with a cancellation error
        emit("serve_ended", error=str(exc) or type(exc).__name__)
    emit("stopped", how="shutdown")
    hard_exit(0)
    return 0


async def register_card(args: argparse.Namespace, endpoint: Any) -> bool:
    from dynamo.llm import ModelInput, ModelType, WorkerType, register_model

    model_type = {
        "chat": ModelType.Chat,
        "completions": ModelType.Completions,
        "chat+completions": ModelType.Chat | ModelType.Completions,
    }[args.model_type]
    path = args.model_path or args.model_name
    try:
        await register_model(
            ModelInput.Tokens,
            model_type,
            endpoint,
            path,
            args.model_name,
            worker_type=WorkerType.Aggregated,
            skip_model_assets=args.minimal_card,
        )
    except Exception as exc:
        emit("model_error", error=str(exc), type=type(exc).__name__)
        return False
    emit("model_registered", model_name=args.model_name, model_path=path, minimal=args.minimal_card)
    return True


_keep: list[Any] = []  # publishers must outlive this function


async def start_event_channel(kind: str, endpoint: Any, connection_id: int) -> None:
    try:
        if kind == "kv":
            from dynamo.llm import KvEventPublisher

            _keep.append(KvEventPublisher(endpoint, kv_block_size=16))
        else:
            from dynamo.llm import WorkerMetricsPublisher

            publisher = WorkerMetricsPublisher()
            await publisher.create_endpoint(endpoint)
            _keep.append(publisher)
    except Exception as exc:
        emit("event_channel_error", kind=kind, error=str(exc), type=type(exc).__name__)
        return
    emit("event_channel_registered", kind=kind, instance_id=connection_id)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
