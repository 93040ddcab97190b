"""The ``dyndisc`` command line: inspect and exercise discovery with the library's own settings.

``app`` (the group, global options, the error handler), ``commands`` (one function per subcommand),
``inputs`` (what an operator types, checked), ``output`` (one JSON schema, tables, colour), ``live``
(``watch --live``) and ``access`` (``dyndisc access``: least-privilege credentials).
"""

from dyndisc.cli import access as _access  # noqa: F401 - registers 'dyndisc access' on the group
from dyndisc.cli import commands as _commands  # noqa: F401 - registers the subcommands on the group
from dyndisc.cli.app import main
from dyndisc.cli.output import event_json, instance_json

__all__ = ["event_json", "instance_json", "main"]
