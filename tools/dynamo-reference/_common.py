"""Shared bits of the reference-runtime drivers: JSON-line output, loopback defaults, signal plumbing.

Imported by ``ref_worker.py`` and ``ref_client.py``; runs in the reference venv (see ``install.sh``).
Stdout carries only JSON lines (one object per line, ``"event"`` first); the runtime logs to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

#: Environment the reference reads at runtime construction; without these it binds or advertises the
#: machine's outside interface. Only defaults: a caller's own values win.
LOOPBACK_ENV = {
    "DYN_TCP_RPC_HOST": "127.0.0.1",
    "DYN_EVENT_PLANE_HOST": "127.0.0.1",
    "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
    "DYN_SYSTEM_HOST": "127.0.0.1",
    "DYN_REQUEST_PLANE": "tcp",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

BACKENDS = ("etcd", "file", "kubernetes", "mem")


def apply_loopback_env() -> None:
    """Set the loopback defaults of :data:`LOOPBACK_ENV` where the caller has not."""
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line ``{"event": ..., "t": <unix time>, **fields}`` and flush."""
    record = {"event": event, "t": round(time.time(), 4), **fields}
    sys.stdout.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def backend_env(backend: str) -> dict[str, str | None]:
    """The environment that selects and configures ``backend``, for the ``started`` line."""
    names = {
        "etcd": ("ETCD_ENDPOINTS", "ETCD_LEASE_TTL"),
        "file": ("DYN_FILE_KV",),
        "kubernetes": ("KUBECONFIG", "POD_NAME", "POD_NAMESPACE", "POD_UID", "DYN_KUBE_DISCOVERY_MODE"),
        "mem": (),
    }[backend]
    return {name: os.environ.get(name) for name in names}


def install_stop_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (recorded as ``signal`` lines)."""
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        emit("signal", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop


def instance_view(instance: Any) -> dict[str, Any]:
    """A JSON-able view of a reference ``Instance`` (``client.instances()``)."""
    view: dict[str, Any] = {"instance_id": instance.instance_id, "id_hex": f"{instance.instance_id:x}"}
    for name in ("namespace", "component", "endpoint", "device_type"):
        view[name] = getattr(instance, name, None)
    transport = getattr(instance, "transport", None)
    if transport is not None:
        view["transport"] = {"kind": transport.kind, "address": transport.address}
    else:
        view["transport"] = None
    return view


def hard_exit(code: int) -> None:
    """Leave without waiting for the runtime's background threads (they can outlive ``asyncio.run``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
