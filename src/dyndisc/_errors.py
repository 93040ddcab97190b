"""Every error dyndisc raises on purpose derives from :class:`DyndiscError`.

Each message names what was wrong and, where it can, what to do about it.
"""

from __future__ import annotations


class DyndiscError(Exception):
    """Base class of the errors dyndisc raises on purpose."""


class InvalidNameError(DyndiscError, ValueError):
    """A namespace, component or endpoint name (or a dotted path of them) is not valid."""


class InvalidRecordError(DyndiscError, ValueError):
    """An instance record is not valid: its id, transport, readiness or metadata (or a stored record that
    cannot be read as one)."""


class RecordTooLargeError(InvalidRecordError):
    """An instance record (mostly its metadata) is larger than the backends accept."""


class ConfigurationError(DyndiscError, ValueError):
    """A setting (environment variable or argument) has a value dyndisc cannot use."""


class MissingExtraError(ConfigurationError):
    """What was asked for needs a client library that is not installed: the message names the pip extra
    that brings it (``the 'nats' backend needs 'nats': pip install 'dyndisc[nats]'``), the same line from
    the library, the command line and ``dyndisc doctor``."""

    def __init__(self, needs: str, module: str, extra: str) -> None:
        #: The module that could not be imported, and the extra that brings it.
        self.module, self.extra = module, extra
        #: The command that installs it.
        self.install = f"pip install 'dyndisc[{extra}]'"
        super().__init__(f"{needs} needs {module!r}: {self.install}")


class BackendUnavailableError(DyndiscError, ConnectionError):
    """The discovery backend could not be reached, or did not answer, within the allowed time: an outage.

    The runtime rides out an outage (it keeps renewing its lease until the server answers); a call that
    meets one fails with this error when its own time is up.
    """


class AccessDeniedError(DyndiscError, PermissionError):
    """The server refused us: credentials rejected, permission denied, or a TLS handshake that cannot succeed.

    Retrying cannot fix it, so the runtime stops at once and raises it (from ``register()`` and from its
    ``async with``) instead of retrying for ever.
    """


class LeaseNotFoundError(DyndiscError):
    """The server no longer knows the lease: it expired or was revoked."""


class LeaseLostError(DyndiscError):
    """The runtime could not keep its lease alive; raised out of the runtime under the ``shutdown`` policy."""


class RegistrationConflictError(DyndiscError):
    """The key of an instance is already held by another lease (another process)."""


class NoInstancesError(DyndiscError, LookupError):
    """A client was asked to pick an instance while none is live."""


class InstanceNotFoundError(DyndiscError, LookupError):
    """``direct(instance_id)`` named an instance that is not live."""


class RuntimeNotStartedError(DyndiscError, RuntimeError):
    """An operation that needs a running runtime was called outside ``async with DistributedRuntime(...)``."""
