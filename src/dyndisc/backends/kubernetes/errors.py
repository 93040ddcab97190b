"""What the Kubernetes API answers, before any client library is imported: JSON objects and error statuses."""

from __future__ import annotations

from typing import Any

from dyndisc._errors import DyndiscError

JsonObject = dict[str, Any]


class KubeStatusError(DyndiscError):
    """The API server answered a request with an error status (``status`` is the HTTP code; ``causes``, the
    reasons of the Status's ``details.causes``)."""

    def __init__(
        self, status: int, reason: str, message: str, what: str, causes: tuple[str, ...] = ()
    ) -> None:
        self.status = status
        self.reason = reason
        self.what = what
        self.message = message
        self.causes = causes
        super().__init__(f"{what}: HTTP {status} {reason}: {message}")

    @property
    def expired(self) -> bool:
        """``410 Gone``: the resourceVersion (or a list's continue token) is older than the server keeps."""
        return self.status == 410

    @property
    def version_too_large(self) -> bool:
        """The resourceVersion asked for is newer than this API server has seen yet (its watch cache lags:
        another API server behind the same address served it): a ``Timeout`` whose cause says so."""
        return "ResourceVersionTooLarge" in self.causes or (
            self.reason == "Timeout" and "Too large resource version" in self.message
        )


def status_error(status: JsonObject, what: str, code: int | None = None) -> KubeStatusError:
    """The error a ``Status`` object describes (the body of an error answer, or a watch's ERROR event)."""
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    return KubeStatusError(
        int(code if code is not None else status.get("code") or 500),
        str(status.get("reason") or ""),
        str(status.get("message") or ""),
        what,
        tuple(str(c.get("reason")) for c in causes or () if isinstance(c, dict) and c.get("reason")),
    )
