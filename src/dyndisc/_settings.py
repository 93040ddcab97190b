"""Runtime settings read from the environment (pydantic-settings).

Backend-specific settings (``ETCD_*``, ``NATS_*``, ``DYN_FILE_KV``, ``POD_*``) live with their backend.
"""

from __future__ import annotations

import enum
import os
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dyndisc._errors import ConfigurationError

#: Backend names accepted by ``DYN_DISCOVERY_BACKEND``, and their aliases.
BACKEND_NAMES = ("etcd", "kubernetes", "memory", "nats", "file")
BACKEND_ALIASES = {"mem": "memory", "k8s": "kubernetes", "kube": "kubernetes"}


def canonical_backend_name(name: str) -> str:
    """Map a backend name or alias to its canonical name, or raise a :class:`ConfigurationError`."""
    key = name.strip().lower()
    key = BACKEND_ALIASES.get(key, key)
    if key not in BACKEND_NAMES:
        valid = ", ".join(BACKEND_NAMES) + " (aliases: " + ", ".join(sorted(BACKEND_ALIASES)) + ")"
        raise ConfigurationError(
            f"unknown discovery backend {name!r} (DYN_DISCOVERY_BACKEND); valid: {valid}"
        )
    return key


class LeaseLossPolicy(enum.StrEnum):
    """What the runtime does when its lease is lost (expired or revoked behind its back)."""

    #: Grant a new lease and register every endpoint again, under a new instance id.
    REREGISTER = "reregister"
    #: Cancel the runtime: ``async with`` raises :class:`~dyndisc.LeaseLostError` (the reference behaviour).
    SHUTDOWN = "shutdown"


class RuntimeSettings(BaseSettings):
    """``DYN_DISCOVERY_BACKEND``, ``DYN_LEASE_TTL`` and ``DYN_LEASE_LOSS_POLICY``."""

    model_config = SettingsConfigDict(env_prefix="DYN_", extra="ignore", case_sensitive=False)

    discovery_backend: str = "etcd"
    lease_ttl: Annotated[float | None, Field(gt=0, le=3600)] = None
    lease_loss_policy: LeaseLossPolicy = LeaseLossPolicy.REREGISTER

    @field_validator("discovery_backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return canonical_backend_name(value)

    def effective_lease_ttl(self) -> float:
        """``DYN_LEASE_TTL``; on etcd ``ETCD_LEASE_TTL`` as the reference documents; else 10 seconds."""
        if self.lease_ttl is not None:
            return self.lease_ttl
        if self.discovery_backend == "etcd" and os.environ.get("ETCD_LEASE_TTL"):
            raw = os.environ["ETCD_LEASE_TTL"]
            try:
                ttl = float(raw)
            except ValueError:
                ttl = 0.0
            if not 0 < ttl <= 3600:
                raise ConfigurationError(f"ETCD_LEASE_TTL={raw!r} must be a number of seconds in (0, 3600]")
            return ttl
        return 10.0


def load_settings(**overrides: object) -> RuntimeSettings:
    """Read :class:`RuntimeSettings`; turn validation errors into one clear :class:`ConfigurationError`."""
    try:
        return RuntimeSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"DYN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"invalid dyndisc settings: {problems}") from None
