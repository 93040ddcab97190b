"""A reader that cannot read a file now (an I/O error, no file descriptor left) decides nothing from it.

The records of a lease whose file is corrupt, or was planted by someone else, are gone for every reader (see
``test_file_store.py``). But a read that fails for the reader's own trouble (``EIO``, ``EMFILE``, ``ENOMEM``)
says nothing about the lease or the record: such a reader must not remove a live lease's records from the
disk, nor report a live record as having left. It fails its call with
:class:`~dyndisc.BackendUnavailableError` naming the file, and a watch is re-established, as for any outage.

The faults are injected where the file backend reads a file (``read_regular_file``), with the errno the
kernel gives; everything else, the directory, the files and their locks, is real.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from dyndisc import (
    BackendUnavailableError,
    DiscoveryEvent,
    DistributedRuntime,
    InstanceQuery,
    Lease,
    Removed,
    Resync,
)
from dyndisc.backends.file import FileStore
from dyndisc.backends.file import records as records_module

PROMPT = 10.0
KEY = "/services/n/c/e/1"


class DiskFaults:
    """Reads of the paths in :attr:`failing` fail with ``errno``; :attr:`failed_thrice` is set by the third
    failure (a threading event: the file backend reads in worker threads too)."""

    def __init__(self, real: Callable[[Path], tuple[bytes, os.stat_result]], code: int) -> None:
        self.real = real
        self.code = code
        self.failing: set[Path] = set()
        self.hits = 0
        self.failed_thrice = threading.Event()

    def read(self, path: Path) -> tuple[bytes, os.stat_result]:
        if Path(path) in self.failing:
            self.hits += 1
            if self.hits >= 3:
                self.failed_thrice.set()
            raise OSError(self.code, os.strerror(self.code), str(path))
        return self.real(path)


@pytest.fixture(params=[errno.EIO, errno.EMFILE], ids=["EIO", "EMFILE"])
def faults(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> DiskFaults:
    injected = DiskFaults(records_module.read_regular_file, request.param)
    monkeypatch.setattr(records_module, "read_regular_file", injected.read)
    return injected


async def two_stores_one_record(root: Path) -> tuple[FileStore, FileStore, Lease]:
    """An owner that wrote :data:`KEY` under a lease of its own, and another store (process) on its root."""
    owner, other = FileStore(root), FileStore(root)
    lease = await owner.grant(30)
    await owner.create(KEY, b"v", lease.id)
    return owner, other, lease


async def test_a_lease_file_the_reader_cannot_read_now_keeps_its_records(
    tmp_path: Path, faults: DiskFaults
) -> None:
    owner, reader, lease = await two_stores_one_record(tmp_path)
    faults.failing.add(owner.lease_path(lease.id))

    with pytest.raises(BackendUnavailableError, match=re.escape(f"{lease.id:016x}.lease")) as raised:
        await reader.get_prefix("/services/")
    assert os.strerror(faults.code) in str(raised.value)
    assert owner.record_path(KEY).exists(), "a reader that could not read the lease file removed its records"
    assert owner.lease_path(lease.id).exists()
    with pytest.raises(BackendUnavailableError):
        await reader.time_to_live(lease.id)

    faults.failing.clear()
    assert await reader.get_prefix("/services/") == {KEY: b"v"}
    assert await owner.keep_alive(lease.id) == 30


async def test_a_record_the_reader_cannot_read_now_fails_the_listing_instead_of_missing_from_it(
    tmp_path: Path, faults: DiskFaults
) -> None:
    owner, reader, lease = await two_stores_one_record(tmp_path)
    await owner.create("/services/n/c/e/2", b"w", lease.id)
    faults.failing.add(owner.record_path(KEY))

    with pytest.raises(BackendUnavailableError, match=re.escape("e/1.rec")):
        await reader.get_prefix("/services/")
    faults.failing.clear()
    assert await reader.get_prefix("/services/") == {KEY: b"v", "/services/n/c/e/2": b"w"}


async def test_a_record_written_over_with_a_reader_that_cannot_read_it_is_not_taken_for_its_lease(
    tmp_path: Path, faults: DiskFaults
) -> None:
    """A create that finds the key taken reads the record there to see whose it is: unreadable now, the key
    is not free (the create fails clearly) and the record stays."""
    owner, other, _ = await two_stores_one_record(tmp_path)
    theirs = await other.grant(30)
    faults.failing.add(owner.record_path(KEY))
    with pytest.raises(BackendUnavailableError, match=re.escape("e/1.rec")):
        await other.create(KEY, b"mine", theirs.id)
    faults.failing.clear()
    assert await other.get_prefix("/services/") == {KEY: b"v"}


async def test_a_watcher_that_cannot_read_a_live_worker_s_files_never_sees_it_leave(
    tmp_path: Path, faults: DiskFaults
) -> None:
    root = tmp_path / "kv"
    store = FileStore(root)
    seen: list[DiscoveryEvent] = []
    async with (
        DistributedRuntime(store, lease_ttl=30) as worker,
        DistributedRuntime(FileStore(root, rescan_interval=0.2), lease_ttl=30) as frontend,
        anyio.create_task_group() as tg,
    ):
        endpoint = worker.endpoint("n.c.e")
        first = await endpoint.register("tcp://h:1", {"v": 1})
        instances = await frontend.acquire_instance_set(InstanceQuery("n", "c", "e"))

        async def collect() -> None:
            async for event in instances.subscribe():
                seen.append(event)

        tg.start_soon(collect)
        with anyio.fail_after(PROMPT):
            while first not in instances.instances():
                await instances.wait_changed()

        record = store.record_path(f"/services/n/c/e/{first.instance_id:x}")
        faults.failing |= {record, store.lease_path(first.instance_id)}
        # The watcher's periodic rescan reads them, fails, and the watch starts again (and fails again).
        assert await anyio.to_thread.run_sync(faults.failed_thrice.wait, PROMPT)
        assert record.exists()
        assert store.lease_path(first.instance_id).exists()
        faults.failing.clear()
        second = await endpoint.register("tcp://h:1", {"v": 2})  # the watch works again
        with anyio.fail_after(PROMPT):
            while second not in instances.instances():
                await instances.wait_changed()
        instances.release()
        tg.cancel_scope.cancel()

    assert not [e for e in seen if isinstance(e, Removed)], seen
    for event in seen:
        if isinstance(event, Resync):
            assert first.instance_id in {i.instance_id for i in event.instances}, event
