"""Testing support shipped with dyndisc: a pytest plugin, runtime hosting, and real-server process managers.

The pytest plugin (``dyndisc.testing.pytest_plugin``) is registered through the ``pytest11`` entry point,
so its fixtures are available as soon as dyndisc is installed: ``dyndisc_store``, ``dyndisc_runtime``,
``dyndisc_make_runtime`` (in-memory discovery; typed ``MakeRuntime``), and ``dyndisc_etcd_server``,
``dyndisc_nats_server``, ``dyndisc_kube_apiserver``, ``dyndisc_tcp_proxy`` ... (real servers started on
loopback). Faults on demand (a broken watch, an expired lease, an outage, a crashed worker) come from
:mod:`dyndisc.testing.faults`.
"""

from dyndisc.testing.faults import CrashableBackend, FaultyStore, Gate
from dyndisc.testing.hosting import MakeRuntime, RuntimeHost

__all__ = ["CrashableBackend", "FaultyStore", "Gate", "MakeRuntime", "RuntimeHost"]
