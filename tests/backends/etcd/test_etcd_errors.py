"""How the etcd connection reads gRPC failures: which are outages to retry on another member, which close a
member's channel (only a connection that failed), which stop at once (refusals), and what a lost lease is."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from aetcd import rpc

from dyndisc import AccessDeniedError, BackendUnavailableError, LeaseNotFoundError
from dyndisc.backends.etcd.connection import EtcdConnection, PermissionDenied, Stubs, Transient, Unreachable
from dyndisc.backends.etcd.settings import parse_endpoints
from dyndisc.testing.servers import EtcdServer


def failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.fixture
def connection() -> EtcdConnection:
    return EtcdConnection(parse_endpoints("http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3"))


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),  # one slow request
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed"),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
        (grpc.StatusCode.CANCELLED, "Cancelled"),
    ],
)
def test_slow_or_leaderless_answers_are_retried_elsewhere_without_closing_the_channel(
    connection: EtcdConnection, code: grpc.StatusCode, details: str
) -> None:
    found = connection.translate(failure(code, details), "writing k")
    assert isinstance(found, Transient)
    assert not isinstance(found, Unreachable), "the channel (and every stream on it) stays open"


@pytest.mark.parametrize(
    "details",
    ["failed to connect to all addresses; last error: UNKNOWN: Connection refused", "Socket closed"],
)
def test_a_connection_that_failed_closes_that_members_channel(
    connection: EtcdConnection, details: str
) -> None:
    assert isinstance(connection.translate(failure(grpc.StatusCode.UNAVAILABLE, details), "w"), Unreachable)


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        # An AccessDeniedError the store can explain in terms of namespaces (a refused write).
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty", AccessDeniedError),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", BackendUnavailableError),
    ],
)
def test_refusals_and_a_lost_lease_are_final(
    connection: EtcdConnection, code: grpc.StatusCode, details: str, kind: type[Exception]
) -> None:
    found = connection.translate(failure(code, details), "writing k")
    assert type(found) is kind


def test_an_unreachable_member_moves_the_next_calls_to_the_next_one(connection: EtcdConnection) -> None:
    assert connection.preferred == 0
    connection.avoid(0)
    assert connection.preferred == 1
    assert connection.stale_since is not None
    connection.mark_ok(2)
    assert (connection.preferred, connection.stale_since) == (2, None)


async def test_a_call_whose_channel_another_call_closed_is_retried_on_a_new_channel(
    dyndisc_etcd_server: EtcdServer,
) -> None:
    # Another call found the member gone and closed its channel while this one held its stubs: grpc raises
    # UsageError ("Channel is closed"), which once stopped a runtime (chaos seed 1024 on etcd).
    connection = EtcdConnection(parse_endpoints(dyndisc_etcd_server.client_url))
    attempts: list[int] = []

    async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> int:
        attempts.append(stubs.generation)
        if len(attempts) == 1:
            await connection.unreachable(stubs)  # what the other call did, just before this one's RPC
        reply = await stubs.kv.Range(rpc.RangeRequest(key=b"k"), timeout=timeout, metadata=metadata)
        return int(reply.header.revision)

    try:
        assert await connection.call("reading k", attempt) > 0
    finally:
        await connection.aclose()
    assert len(attempts) == 2
    assert attempts[1] != attempts[0], "the retry runs on a channel opened afresh"
