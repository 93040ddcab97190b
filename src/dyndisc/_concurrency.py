"""Small structured-concurrency helpers shared by the runtime and the backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup


@asynccontextmanager
async def background_tasks() -> AsyncIterator[TaskGroup]:
    """A task group for helper tasks that live exactly as long as the ``async with`` body.

    On a normal exit the helpers are cancelled. A single error (from the body or a helper) propagates as
    itself rather than wrapped in an ``ExceptionGroup``, so callers can catch what they expect.
    """
    try:
        async with anyio.create_task_group() as tg:
            yield tg
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group
