"""``python -m dyndisc.testing.servers kube build|path [NAME...]``: build (or locate) the cached
kube-apiserver and kube-controller-manager."""

from __future__ import annotations

import sys

from dyndisc.testing.servers.kube_build import _main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "kube":
        print(
            "usage: python -m dyndisc.testing.servers kube {build [--source DIR] [--force] | path} [NAME...]",
            file=sys.stderr,
        )
        raise SystemExit(2)
    raise SystemExit(_main(args[1:]))
