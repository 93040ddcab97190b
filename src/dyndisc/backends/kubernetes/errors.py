"""What the Kubernetes API answers, before any client library is imported: JSON objects and error statuses."""

from __future__ import annotations

from typing import Any

from dyndisc._errors import DyndiscError

JsonObject = dict[str, Any]


class KubeStatusError(DyndiscError):
    """The API server answered a request with an error status (``status`` is the HTTP code)."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        self.status = status
        self.reason = reason
        self.what = what
        self.message = message
        super().__init__(f"{what}: HTTP {status} {reason}: {message}")
