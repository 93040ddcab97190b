"""The runtime: :class:`DistributedRuntime`, a facade over the parts it holds while it runs.

Import the public names from :mod:`dyndisc`; the modules here are the runtime's rooms:

* ``distributed``: :class:`DistributedRuntime`, the settings, the backend, the ``async with`` that starts
  and stops the parts, and handles;
* ``parts``: :class:`RuntimeParts`, what a running runtime holds;
* ``registrations``: what the application wants registered and what is written under which lease (pure,
  synchronous);
* ``lease_keeper``: the lease, its keep-alive loop, its replacement when lost, its revoke on exit;
* ``registrar``: writes the registrations and lease-bound entries under the lease, and everything again
  under a replacement lease;
* ``metadata``: metadata entries, model cards and event channels;
* ``watches``: one shared live set per query;
* ``health``: the lease's health, and the HTTP probe endpoint that answers from it;
* ``handles``: ``Namespace``, ``Component``, ``Endpoint`` and ``Bucket``.

Dependencies point down that list from ``distributed``: ``handles`` reaches the parts through
``parts.HasParts``, never the facade.
"""

from dyndisc.runtime.distributed import DistributedRuntime, LeaseChangeCallback
from dyndisc.runtime.handles import Bucket, Component, Endpoint, Namespace
from dyndisc.runtime.health import LeaseState, RuntimeHealth
from dyndisc.runtime.lease_keeper import LeaseChange
from dyndisc.runtime.parts import RuntimeParts

__all__ = [
    "Bucket",
    "Component",
    "DistributedRuntime",
    "Endpoint",
    "LeaseChange",
    "LeaseChangeCallback",
    "LeaseState",
    "Namespace",
    "RuntimeHealth",
    "RuntimeParts",
]
