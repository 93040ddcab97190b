"""The ``dyndisc`` command line: inspect and exercise discovery with the library's own settings.

``app`` (the group, global options, the error handler), ``commands`` (list, get, register, doctor, demo, ui,
kube), ``watching`` (watch), ``events`` (what happened), ``metadata`` (models, channels, entries),
``server`` (a server to try it with), ``access`` (``dyndisc access``: least-privilege credentials),
``inputs`` (what an operator types, checked), ``output`` (one JSON schema, tables, colour), ``live``
(``watch --live``), ``history`` (the timeline of a fleet), ``liveness`` (whether a view is current) and
``layouts`` (the hint when the other key layout has the records).
"""

from dyndisc.cli import access as _access  # noqa: F401 - registers 'dyndisc access' on the group
from dyndisc.cli import commands as _commands  # noqa: F401 - registers the subcommands on the group
from dyndisc.cli import events as _events  # noqa: F401 - registers 'dyndisc events'
from dyndisc.cli import metadata as _metadata  # noqa: F401 - registers models, channels, entries
from dyndisc.cli import server as _server  # noqa: F401 - registers 'dyndisc server'
from dyndisc.cli import watching as _watching  # noqa: F401 - registers 'dyndisc watch'
from dyndisc.cli.app import main
from dyndisc.cli.output import event_json, instance_json

__all__ = ["event_json", "instance_json", "main"]
