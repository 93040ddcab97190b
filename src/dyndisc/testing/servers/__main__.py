"""Build (or locate) the test servers' binaries, cached by version:

python -m dyndisc.testing.servers etcd {build [--force] | path}
python -m dyndisc.testing.servers etcdctl {build [--force] | path}
python -m dyndisc.testing.servers kube {build [--source DIR] [--force] | path} [NAME...]

To run a server for trying dyndisc by hand, ``dyndisc server etcd`` (or ``nats``) starts one with these
binaries and prints how to use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dyndisc.testing.servers._gobuild import cached_binary_path
from dyndisc.testing.servers._process import ServerUnavailable
from dyndisc.testing.servers.etcd import ETCD_VERSION, build_etcd, build_etcdctl
from dyndisc.testing.servers.kube_build import _main as kube_main


def parser() -> argparse.ArgumentParser:
    """The command line: ``etcd``, ``etcdctl`` and ``kube``, each with ``build`` and ``path``."""
    top = argparse.ArgumentParser(
        prog="python -m dyndisc.testing.servers",
        description="Build (or locate) the test servers' binaries, cached by version under "
        "~/.cache/dyndisc. To run a server by hand: dyndisc server etcd (or nats).",
    )
    servers = top.add_subparsers(dest="server", required=True, metavar="{etcd,etcdctl,kube}")
    for name, what in (("etcd", "the server"), ("etcdctl", "its command-line client")):
        tool = servers.add_parser(name, help=f"{what}, {ETCD_VERSION}, built from its Go modules")
        commands = tool.add_subparsers(dest="command", required=True)
        build = commands.add_parser("build", help="build it (or reuse the cached build) and print its path")
        build.add_argument("--force", action="store_true", help="rebuild even when cached")
        commands.add_parser("path", help="print where the build is cached (it may not exist yet)")
    # Listed for --help; its own arguments are kube_build's (see main).
    servers.add_parser("kube", help="kube-apiserver and kube-controller-manager (kube --help for more)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0, 1 for a failed build, 2 for a usage mistake)."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["kube"]:
        return kube_main(given[1:])
    args = parser().parse_args(given)
    if args.command == "path":
        print(cached_binary_path(args.server, ETCD_VERSION))
        return 0
    build = build_etcd if args.server == "etcd" else build_etcdctl
    try:
        print(build(force=args.force, verbose=True))
    except ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
