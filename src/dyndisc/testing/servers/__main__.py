"""Build (or locate) the test servers' binaries, cached by version:

python -m dyndisc.testing.servers etcd {build [--force] | path}
python -m dyndisc.testing.servers etcdctl {build [--force] | path}
python -m dyndisc.testing.servers kube {build [--source DIR] [--force] | path} [NAME...]
"""

from __future__ import annotations

import sys

from dyndisc.testing.servers._gobuild import cached_binary_path
from dyndisc.testing.servers._process import ServerUnavailable
from dyndisc.testing.servers.etcd import ETCD_VERSION, build_etcd, build_etcdctl
from dyndisc.testing.servers.kube_build import _main as kube_main


def etcd_main(args: list[str], name: str = "etcd") -> int:
    if args[:1] == ["path"]:
        print(cached_binary_path(name, ETCD_VERSION))
        return 0
    if args[:1] != ["build"] or set(args[1:]) - {"--force"}:
        print(f"usage: python -m dyndisc.testing.servers {name} {{build [--force] | path}}", file=sys.stderr)
        return 2
    build = build_etcd if name == "etcd" else build_etcdctl
    try:
        print(build(force="--force" in args, verbose=True))
    except ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] in (["etcd"], ["etcdctl"]):
        raise SystemExit(etcd_main(args[1:], args[0]))
    if args[:1] == ["kube"]:
        raise SystemExit(kube_main(args[1:]))
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
