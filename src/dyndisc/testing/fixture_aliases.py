"""The plugin's fixtures under their old, unprefixed names: deprecated, and gone in the next release.

Unprefixed global fixtures (``etcd_server``, ``make_runtime`` ...) clash with a project's own, so every
fixture of the plugin now carries the ``dyndisc_`` prefix. Each old name still works for one release: it
warns (a :class:`DeprecationWarning` naming the new fixture) when a test uses it, then gives the new
fixture's value. A fixture of the same name in your own conftest wins over these, silently: pytest prefers
a conftest's fixtures to a plugin's.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import pytest

__all__ = [
    "RENAMED",
    "etcd_cluster",
    "etcd_server",
    "kube_apiserver",
    "kube_cluster",
    "make_runtime",
    "nats_server",
    "private_servers",
    "tcp_proxy",
]

#: ``old name -> (new name, scope)``: an alias has its fixture's scope, so a project's session fixture that
#: asks for ``etcd_server`` keeps working.
RENAMED: dict[str, tuple[str, Literal["session", "function"]]] = {
    "etcd_server": ("dyndisc_etcd_server", "session"),
    "nats_server": ("dyndisc_nats_server", "session"),
    "kube_apiserver": ("dyndisc_kube_apiserver", "session"),
    "kube_cluster": ("dyndisc_kube_cluster", "session"),
    "etcd_cluster": ("dyndisc_etcd_cluster", "function"),
    "tcp_proxy": ("dyndisc_tcp_proxy", "function"),
    "private_servers": ("dyndisc_private_servers", "function"),
    "make_runtime": ("dyndisc_make_runtime", "function"),
}


def _alias(old: str) -> Any:
    new, scope = RENAMED[old]

    def alias(request: pytest.FixtureRequest) -> Any:
        # stacklevel 1: the warning is this module's, so `error::DeprecationWarning:dyndisc.testing` (and
        # nothing broader) turns it into an error; the message names the fixture to use.
        warnings.warn(
            f"the pytest fixture {old!r} is deprecated and goes in the next release of dyndisc: use {new!r}",
            DeprecationWarning,
            stacklevel=1,
        )
        return request.getfixturevalue(new)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated: ``{new}`` under its old name (warns; gone in the next release)."
    return pytest.fixture(scope=scope, name=old)(alias)


etcd_server = _alias("etcd_server")
nats_server = _alias("nats_server")
kube_apiserver = _alias("kube_apiserver")
kube_cluster = _alias("kube_cluster")
etcd_cluster = _alias("etcd_cluster")
tcp_proxy = _alias("tcp_proxy")
private_servers = _alias("private_servers")
make_runtime = _alias("make_runtime")
