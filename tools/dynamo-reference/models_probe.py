"""Poll a reference frontend's ``GET /v1/models`` and print the model list on every change (JSON lines).

Standard library only; runs with any python::

    python tools/dynamo-reference/models_probe.py --url http://127.0.0.1:8000 [--duration 30] [--until tiny]

Lines: ``models`` (``ids``: sorted model ids, ``data``: the raw entries) on start and on every change,
``unreachable`` once while the frontend does not answer, ``until_met`` when ``--until ID`` is listed
(``--until-gone ID``: when it is no longer listed), ``timeout`` if ``--duration`` ran out first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": round(time.time(), 4), **fields}) + "\n")
    sys.stdout.flush()


def fetch(url: str) -> list[dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    data = body.get("data", [])
    return data if isinstance(data, list) else []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="frontend base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--duration", type=float, default=0.0, help="give up after this many seconds (0: never)")
    p.add_argument("--until", metavar="ID", help="exit 0 once this model id is listed")
    p.add_argument("--until-gone", metavar="ID", help="exit 0 once this model id is not listed")
    args = p.parse_args()
    start = time.monotonic()
    last: list[str] | None = None
    unreachable = False
    while True:
        data = fetch(args.url.rstrip("/"))
        if data is None:
            if not unreachable:
                emit("unreachable", url=args.url)
                unreachable = True
        else:
            unreachable = False
            ids = sorted(str(m.get("id")) for m in data)
            if ids != last:
                emit("models", ids=ids, data=data)
                last = ids
            if args.until and args.until in ids:
                emit("until_met", id=args.until, elapsed=round(time.monotonic() - start, 3))
                return 0
            if args.until_gone and args.until_gone not in ids:
                emit("until_met", gone=args.until_gone, elapsed=round(time.monotonic() - start, 3))
                return 0
        if args.duration and time.monotonic() - start >= args.duration:
            emit("timeout", elapsed=round(time.monotonic() - start, 3))
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
