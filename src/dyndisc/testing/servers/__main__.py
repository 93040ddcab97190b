"""Build (or locate) the test servers' binaries, cached by version:

python -m dyndisc.testing.servers etcd {build [--force] | path}
python -m dyndisc.testing.servers kube {build [--source DIR] [--force] | path} [NAME...]
"""

from __future__ import annotations

import sys

from dyndisc.testing.servers._gobuild import cached_binary_path
from dyndisc.testing.servers._process import ServerUnavailable
from dyndisc.testing.servers.etcd import ETCD_VERSION, build_etcd
from dyndisc.testing.servers.kube_build import _main as kube_main


def etcd_main(args: list[str]) -> int:
    if args[:1] == ["path"]:
        print(cached_binary_path("etcd", ETCD_VERSION))
        return 0
    if args[:1] != ["build"] or set(args[1:]) - {"--force"}:
        print("usage: python -m dyndisc.testing.servers etcd {build [--force] | path}", file=sys.stderr)
        return 2
    try:
        print(build_etcd(force="--force" in args, verbose=True))
    except ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["etcd"]:
        raise SystemExit(etcd_main(args[1:]))
    if args[:1] == ["kube"]:
        raise SystemExit(kube_main(args[1:]))
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
