"""Settings of the etcd backend: the ``ETCD_*`` environment variables, endpoint URLs and TLS material."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from dyndisc._errors import ConfigurationError
from dyndisc._settings import Settings


class EtcdSettings(Settings):
    """The ``ETCD_*`` environment variables of the etcd backend."""

    model_config = SettingsConfigDict(env_prefix="ETCD_", extra="ignore", case_sensitive=False)
    what: ClassVar[str] = "etcd settings"

    #: Comma-separated client URLs (``http://`` or ``https://``); calls fail over between them.
    endpoints: str = "http://localhost:2379"
    #: Lease TTL in seconds: the default of runtimes on etcd (``DYN_LEASE_TTL`` wins when both are set).
    lease_ttl: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: User and password for etcd auth (both or neither).
    auth_username: str | None = None
    auth_password: SecretStr | None = None
    #: CA bundle that signs the etcd server certificate: a file path or PEM text.
    auth_ca: str | None = None
    #: Client certificate and key for mutual TLS: file paths or PEM text (both or neither).
    auth_client_cert: str | None = None
    auth_client_key: SecretStr | None = None
    #: How long a process started before etcd waits for it (with backoff) before giving up.
    startup_connect_timeout_seconds: Annotated[float, Field(ge=0)] = 120.0
    #: How long one call may retry (failing over between endpoints) once connected.
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0

    def tls_material(self) -> TlsMaterial | None:
        """The PEM bytes of the CA and client identity, or ``None`` when none is configured."""
        key = self.auth_client_key.get_secret_value() if self.auth_client_key else None
        if (self.auth_client_cert is None) != (key is None):
            raise ConfigurationError(
                "ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY go together: set both (or neither)"
            )
        if self.auth_ca is None and self.auth_client_cert is None:
            return None
        return TlsMaterial(
            ca=_pem(self.auth_ca, "ETCD_AUTH_CA"),
            cert=_pem(self.auth_client_cert, "ETCD_AUTH_CLIENT_CERT"),
            key=_pem(key, "ETCD_AUTH_CLIENT_KEY"),
        )


def _pem(value: str | None, setting: str) -> bytes | None:
    """Accept PEM text or a path to a PEM file."""
    if value is None or not value.strip():
        return None
    if "-----BEGIN" in value:
        return value.strip().encode() + b"\n"
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting} must be PEM text or the path of a PEM file; cannot read {str(path)!r}: {exc.strerror}"
        ) from None
    if b"-----BEGIN" not in data:
        raise ConfigurationError(f"{setting}={str(path)!r} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class Target:
    """One etcd endpoint: the URL as configured (for messages) and the ``host:port`` gRPC dials."""

    url: str
    address: str
    secure: bool


def parse_endpoints(raw: str) -> list[Target]:
    """Parse ``ETCD_ENDPOINTS``: comma-separated ``http(s)://host:port`` (or bare ``host:port``) URLs."""
    targets: list[Target] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        url = item if "://" in item else f"http://{item}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"ETCD_ENDPOINTS entry {item!r} is not an etcd client URL; use http://host:2379 or https://host:2379"
            )
        try:
            port = parts.port or 2379
        except ValueError:
            raise ConfigurationError(f"ETCD_ENDPOINTS entry {item!r} has an invalid port") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        targets.append(Target(url=url.rstrip("/"), address=f"{host}:{port}", secure=parts.scheme == "https"))
    if not targets:
        raise ConfigurationError(
            "ETCD_ENDPOINTS is empty; give at least one URL such as http://localhost:2379"
        )
    if len({t.secure for t in targets}) > 1:
        raise ConfigurationError(
            f"ETCD_ENDPOINTS={raw!r} mixes http:// and https:// endpoints; one cluster uses one scheme"
        )
    return targets


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes for a TLS connection; ``None`` parts fall back to the system roots / no client cert."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
