"""The small concurrency helpers the runtime and backends share."""

from __future__ import annotations

import anyio

from dyndisc._concurrency import KeyedLocks, SharedExclusiveLock


async def test_keyed_locks_serialise_one_key_and_not_others() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    both = anyio.Event()

    async def hold(key: str) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            if inside["a"] and inside["b"]:
                both.set()
            with anyio.fail_after(5):
                await anyio.sleep(0.01)
            inside[key] -= 1

    async with anyio.create_task_group() as tg:
        for key in "aaabbb":
            tg.start_soon(hold, key)
    assert most == {"a": 1, "b": 1}, "one holder per key at a time"
    assert both.is_set(), "different keys were held at the same time"
    assert len(locks) == 0, "locks nobody holds are dropped"


async def test_an_exclusive_holder_waits_for_shared_ones_and_goes_first() -> None:
    lock = SharedExclusiveLock()
    order: list[str] = []
    shared_in = anyio.Event()
    release_shared = anyio.Event()

    async def shared(name: str) -> None:
        async with lock.shared():
            order.append(f"{name} in")
            shared_in.set()
            await release_shared.wait()
            order.append(f"{name} out")

    async def exclusive() -> None:
        async with lock.exclusive():
            order.append("exclusive")

    async def late_shared() -> None:
        async with lock.shared():
            order.append("late in")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(shared, "first")
            await shared_in.wait()
            tg.start_soon(exclusive)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(late_shared)  # arrives while the exclusive holder waits: goes after it
            await anyio.wait_all_tasks_blocked()
            assert order == ["first in"]
            release_shared.set()
    assert order == ["first in", "first out", "exclusive", "late in"]
