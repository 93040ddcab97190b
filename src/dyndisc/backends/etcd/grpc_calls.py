"""Awaiting grpc.aio calls under anyio: a cancellation of ours stays ours, and one of grpc's is told apart.

grpc.aio turns a cancellation into a fresh ``CancelledError`` without the marker anyio's cancel scopes look
for, and raises one of its own when a call's channel is closed under it; both would otherwise silently
cancel the task group around the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


async def grpc_await(awaitable: Awaitable[T]) -> T:
    """Await a grpc.aio call (or a coroutine making calls) so that a cancellation of ours stays ours.

    grpc.aio turns a cancellation into a fresh ``CancelledError`` without the marker anyio's cancel scopes
    look for, so a timeout (``anyio.fail_after``) around a bare gRPC await escapes as a stray cancellation
    and tears down the caller's task group. So we never let a cancellation reach grpc's own awaits: a unary
    call (what every request is) is waited for through a plain future its completion resolves, and a
    coroutine (stream reads and writes) runs in a task of its own that we wait for from outside. Either way
    the call is cancelled with us and never outlives this function's caller.
    """
    if isinstance(awaitable, grpc.aio.UnaryUnaryCall):
        answer: T = await _finished(awaitable)
        return answer
    inner = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({inner})
    except BaseException:
        inner.cancel()
        inner.add_done_callback(_consume)
        raise
    return inner.result()


async def _finished(call: Any) -> Any:
    """The answer of a unary call, waited for without a task of our own: grpc.aio already runs the call
    in one, and a second per request costs a registration about a tenth of its CPU."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finished(_call: Any) -> None:
        if not done.done():
            done.set_result(None)

    # grpc runs done callbacks inside its own task, which then completes in the same step: once ``done`` is
    # set, awaiting the call returns (or raises its error) without suspending.
    call.add_done_callback(finished)
    try:
        await done
    except BaseException:
        call.cancel()
        raise
    return await call


def stray_cancellation() -> bool:
    """Whether a ``CancelledError`` just caught is not a cancellation of the current task (grpc.aio raises
    one when a call's channel is closed under it): it must be handled as a failure, never let out as a
    cancellation, or it would silently cancel the task group around us."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
