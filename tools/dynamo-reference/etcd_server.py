"""Run one loopback etcd (dyndisc's ``EtcdServer``) until SIGTERM/SIGINT, for manual runs of the drivers.

Run with dyndisc's venv, not the reference's::

    PYTHONPATH=src /work/main/.venv/bin/python tools/dynamo-reference/etcd_server.py

Prints one JSON line ``{"event": "etcd_ready", "endpoint": "http://127.0.0.1:PORT", "pid": ...}``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from dyndisc.testing.servers.etcd import EtcdServer


def main() -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with EtcdServer() as etcd:
        line = {
            "event": "etcd_ready",
            "endpoint": etcd.client_url,
            "pid": etcd.pid,
            "version": etcd.version(),
        }
        print(json.dumps(line), flush=True)
        stop.wait()
    print(json.dumps({"event": "etcd_stopped"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
