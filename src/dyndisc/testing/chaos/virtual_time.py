"""Virtual time for the simulation: an asyncio loop whose clock jumps to the next timer instead of sleeping.

When nothing is ready to run, the loop moves its clock to the next timer, so a 20-second run takes
milliseconds, and the loop runs callbacks in the order they were scheduled, so a seed replays exactly. It
serves code that does no real I/O (the memory store, the runtime, the watchers).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class _VirtualSelector(selectors.BaseSelector):
    """A selector that never waits: it moves the loop's virtual clock to the next timer instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the simulation is stuck: every task waits and no timer is due")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time (for code that does no real I/O)."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_VirtualSelector(self))
        self.set_exception_handler(_quiet_shutdown)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)


def _quiet_shutdown(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop what the loop says of the tasks it cancels as a run ends (a run's runtimes are still running
    then): formatting each report costs a tenth of a short run. Anything else is reported as usual."""
    if "during asyncio.run() shutdown" not in str(context.get("message", "")):
        loop.default_exception_handler(context)
