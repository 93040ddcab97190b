"""Settings of the NATS backend, read from ``NATS_*`` environment variables, and connection error messages."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from dyndisc._errors import ConfigurationError
from dyndisc._settings import Settings


class NatsSettings(Settings):
    """Connection settings, read from ``NATS_*`` environment variables.

    ``NATS_SERVER`` (comma-separated URLs), ``NATS_USER``/``NATS_PASSWORD`` or ``NATS_TOKEN`` or
    ``NATS_CREDS`` (a ``.creds`` file), ``NATS_CA``/``NATS_CERT``/``NATS_KEY`` (TLS, PEM file paths),
    ``NATS_KV_BUCKET``, ``NATS_KV_REPLICAS``, ``NATS_KV_MARKER_TTL``, ``NATS_TIMEOUT`` and ``NATS_SCOPE``
    (the scope of credentials made by ``dyndisc access nats``).
    """

    model_config = SettingsConfigDict(env_prefix="NATS_", extra="ignore", case_sensitive=False)
    what: ClassVar[str] = "NATS settings"

    server: str = "nats://localhost:4222"
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds: Path | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    kv_bucket: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$", max_length=128)] = "dyndisc"
    #: Servers holding a copy of the bucket when dyndisc creates it (1, or 3 / 5 on a cluster). Unset: 1, and
    #: an existing bucket is used whatever its count; set: an existing bucket must have that many.
    kv_replicas: Annotated[int | None, Field(ge=1, le=5)] = None
    #: Seconds the server keeps the delete marker it writes when a key expires (>= 1).
    kv_marker_ttl: Annotated[int, Field(ge=1, le=86_400)] = 60
    #: Seconds to wait for the server: connecting, and each JetStream request.
    timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    #: How long a process started before nats-server keeps retrying (with backoff) to make its first
    #: connection; 0 fails at the first unanswered try. Refused credentials always fail at once.
    startup_connect_timeout: Annotated[float, Field(ge=0, le=3600)] = 0.0
    #: The scope of credentials made by ``dyndisc access nats``: lease keys under
    #: ``_dyndisc/lease.<scope>.``, replies under ``_INBOX.<scope>.``; unset for unscoped credentials.
    scope: str | None = None

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("server")
    @classmethod
    def _servers(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("give at least one URL such as nats://localhost:4222")
        for url in urls:
            if "://" not in url:
                raise ValueError(f"{url!r} is not a URL: write nats://host:4222 (or tls://host:4222)")
        return ",".join(urls)

    @property
    def servers(self) -> list[str]:
        """The server URLs."""
        return self.server.split(",")

    @property
    def replicas(self) -> int:
        """The replica count a new bucket gets (``NATS_KV_REPLICAS``, default 1)."""
        return self.kv_replicas or 1

    @property
    def display_servers(self) -> str:
        """The server URLs with any embedded password hidden, for messages."""
        return ",".join(redact(url) for url in self.servers)

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the settings; a bad value or combination is one clear :class:`~dyndisc.ConfigurationError`."""
        settings = super().load(**overrides)
        settings.check()
        return settings

    def check(self) -> None:
        """Reject combinations that cannot work, naming the variables involved."""
        if (self.user is None) != (self.password is None):
            raise ConfigurationError("set both NATS_USER and NATS_PASSWORD, or neither")
        if self.token is not None and self.user is not None:
            raise ConfigurationError("set NATS_TOKEN or NATS_USER/NATS_PASSWORD, not both")
        if (self.cert is None) != (self.key is None):
            raise ConfigurationError("set both NATS_CERT and NATS_KEY (client certificate and its key)")
        for name, path in (("NATS_CREDS", self.creds), ("NATS_CA", self.ca), ("NATS_CERT", self.cert)):
            if path is not None and not path.is_file():
                raise ConfigurationError(f"{name}={path} is not a readable file")
        if self.key is not None and not self.key.is_file():
            raise ConfigurationError(f"NATS_KEY={self.key} is not a readable file")

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``NATS_CA``/``NATS_CERT``/``NATS_KEY``, or ``None`` when none is set."""
        if self.ca is None and self.cert is None and not any(u.startswith("tls://") for u in self.servers):
            return None
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.cert is not None and self.key is not None:
            try:
                context.load_cert_chain(str(self.cert), str(self.key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"cannot load the client certificate NATS_CERT={self.cert} / NATS_KEY={self.key}: {exc}"
                ) from exc
        return context


def redact(url: str) -> str:
    """``url`` with any embedded password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in userinfo else f"{scheme}{sep}***@{host}"


def connect_failure_message(where: str, settings: NatsSettings, errors: list[Exception]) -> str:
    """Why connecting failed, naming the setting to fix (credentials are never included)."""
    text = " / ".join(dict.fromkeys(str(e) or type(e).__name__ for e in errors))
    lowered = text.lower()
    if "authorization" in lowered or "authentication" in lowered:
        if settings.user is not None:
            who = f"the password for user {settings.user!r} (NATS_USER / NATS_PASSWORD)"
        elif settings.token is not None:
            who = "the token (NATS_TOKEN)"
        elif settings.creds is not None:
            who = f"the credentials file {settings.creds} (NATS_CREDS)"
        else:
            who = "a connection without credentials: set NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS"
        return f"{where} refused {who} ({text})"
    return (
        f"cannot connect to {where} within {settings.timeout}s per try ({text}); check NATS_SERVER and that "
        "nats-server is running"
    )
