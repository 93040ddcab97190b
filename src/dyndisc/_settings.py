"""Settings read from the environment (pydantic-settings), and the runtime's own.

Every settings class derives from :class:`Settings`, so a bad value anywhere becomes one
:class:`~dyndisc.ConfigurationError` naming the variable. Backend settings (``ETCD_*``, ``NATS_*``,
``DYN_FILE_*``, ``POD_*``) live with their backend and are read only when that backend is created by name.
"""

from __future__ import annotations

import enum
import functools
import os
from typing import Annotated, Any, ClassVar, Literal, Self, cast, get_args

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dyndisc._errors import ConfigurationError

#: Backend names accepted by ``DYN_DISCOVERY_BACKEND``, and their aliases. The reference runtime's values
#: (``etcd``, ``file``, ``mem``, ``kubernetes``) mean what they mean there.
BACKEND_NAMES = ("etcd", "kubernetes", "memory", "nats", "file")
BACKEND_ALIASES = {"mem": "memory", "k8s": "kubernetes", "kube": "kubernetes"}
#: The reference's older name for "a key-value store, chosen by ``DYN_STORE_KV``" (``etcd``, ``file`` or
#: ``mem``; default ``etcd``), from before ``DYN_DISCOVERY_BACKEND`` named the store itself.
KV_STORE = "kv_store"
KV_STORE_NAMES = ("etcd", "file", "mem")
#: A backend name or alias, for type checkers (``DistributedRuntime("etcdd")`` is an error before it runs).
BackendName = Literal["etcd", "kubernetes", "memory", "nats", "file", "mem", "k8s", "kube", "kv_store"]


def canonical_backend_name(name: str, source: str = "DYN_DISCOVERY_BACKEND") -> BackendName:
    """Map a backend name or alias to its canonical name, or raise a :class:`ConfigurationError`.

    ``source`` says where the name came from (a variable or an argument), for the message. ``kv_store``
    reads ``DYN_STORE_KV``, as the reference runtime's older versions did.
    """
    key = name.strip().lower()
    if key == KV_STORE:
        store = os.environ.get("DYN_STORE_KV", "etcd").strip().lower() or "etcd"
        if store not in KV_STORE_NAMES:
            raise ConfigurationError(
                f"unknown key-value store {store!r} (DYN_STORE_KV, read because {source}={name!r}); valid: "
                + ", ".join(KV_STORE_NAMES)
            )
        key = store
    key = BACKEND_ALIASES.get(key, key)
    if key not in BACKEND_NAMES:
        valid = (
            ", ".join(BACKEND_NAMES)
            + " (aliases: "
            + ", ".join(sorted(BACKEND_ALIASES))
            + f"; {KV_STORE} picks DYN_STORE_KV's store)"
        )
        raise ConfigurationError(f"unknown discovery backend {name!r} ({source}); valid: {valid}")
    return cast(BackendName, key)


class Settings(BaseSettings):
    """Base of every settings class: :meth:`load` reads the environment and reports bad values clearly."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)
    #: What these settings are, for messages ("etcd settings").
    what: ClassVar[str] = "settings"

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the settings (``overrides`` win); a bad value is one :class:`ConfigurationError`."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            prefix = str(cls.model_config.get("env_prefix") or "")
            problems = "; ".join(
                f"{prefix}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ConfigurationError(f"invalid {cls.what}: {problems}") from None


class LeaseLossPolicy(enum.StrEnum):
    """What the runtime does when its lease is lost (expired or revoked behind its back)."""

    #: Grant a new lease and register every endpoint again, under a new instance id.
    REREGISTER = "reregister"
    #: Cancel the runtime: ``async with`` raises :class:`~dyndisc.LeaseLostError` (the reference behaviour).
    SHUTDOWN = "shutdown"


class RuntimeSettings(Settings):
    """``DYN_DISCOVERY_BACKEND``, ``DYN_LEASE_TTL``, ``DYN_LEASE_LOSS_POLICY``, ``DYN_HEALTH_PORT`` and
    ``DYN_HEALTH_HOST``.

    The backend name is checked only when the runtime creates its backend by name: a runtime given a
    backend object does not depend on the variable.
    """

    model_config = SettingsConfigDict(env_prefix="DYN_", extra="ignore", case_sensitive=False)
    what: ClassVar[str] = "dyndisc settings"

    discovery_backend: str = "etcd"
    lease_ttl: Annotated[float | None, Field(gt=0, le=3600)] = None
    lease_loss_policy: LeaseLossPolicy = LeaseLossPolicy.REREGISTER
    #: Port of the HTTP probe endpoint (``/live``, ``/ready``, ``/health``); off when unset; 0 picks one.
    health_port: Annotated[int | None, Field(ge=0, le=65535)] = None
    #: Where the probe endpoint listens (a kubelet probes the pod's address, so all interfaces by default).
    health_host: str = "0.0.0.0"

    @classmethod
    def load_cached(cls, **overrides: Any) -> RuntimeSettings:
        """:meth:`load`, remembered per value of the ``DYN_*`` variables and ``overrides``: reading the
        environment through pydantic-settings costs a quarter of a millisecond, and a process may make many
        runtimes. The settings are shared: treat them as read-only."""
        found: RuntimeSettings = _load_runtime_settings(
            tuple(sorted((k.upper(), v) for k, v in os.environ.items() if k.upper().startswith("DYN_"))),
            tuple(sorted(overrides.items())),
        )
        return found


@functools.lru_cache(maxsize=64)
def _load_runtime_settings(
    _environment: tuple[tuple[str, str], ...], overrides: tuple[tuple[str, Any], ...]
) -> RuntimeSettings:
    # The environment is part of the key only: pydantic-settings reads it again itself.
    return RuntimeSettings.load(**dict(overrides))


#: The lease TTL when neither the runtime, ``DYN_LEASE_TTL`` nor the backend (``ETCD_LEASE_TTL``) sets one.
DEFAULT_LEASE_TTL = 10.0


# The Literal and the tuples above must name the same backends.
assert set(get_args(BackendName)) == {*BACKEND_NAMES, *BACKEND_ALIASES, KV_STORE}
