"""The file backend on a real directory: layout, permissions, liveness, watches, corruption and settings."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyndisc import (
    Added,
    ConfigurationError,
    Instance,
    InstanceQuery,
    KvDiscovery,
    LeaseNotFoundError,
    Resync,
    create_backend,
)
from dyndisc.backends import file as file_backend
from dyndisc.backends.file import FileStore, decode_segment, encode_segment
from dyndisc.backends.file.watch import FileWatch
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot

PROMPT = 5.0


async def next_event(events: AsyncIterator[StoreEvent], timeout: float = PROMPT) -> StoreEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


def files(root: Path, pattern: str = "*") -> list[Path]:
    """The regular files under ``root`` matching ``pattern``."""
    return [p for p in root.rglob(pattern) if p.is_file()]


def expire(store: FileStore, lease_id: int) -> None:
    """Age a lease file past its TTL, as a keep-alive loop that stopped long ago would leave it."""
    past = time.time_ns() - 3600 * 10**9
    os.utime(store.lease_path(lease_id), ns=(past, past))


# -- layout ---------------------------------------------------------------------------------------------

segments = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", ".", "..", "%", "%41", "a.rec", ".tmp-x", "~"]
)


@pytest.fixture(scope="module")
def layout_store(tmp_path_factory: pytest.TempPathFactory) -> FileStore:
    return FileStore(tmp_path_factory.mktemp("layout"))


@given(parts=st.lists(segments, min_size=1, max_size=6))
def test_keys_map_to_files_inside_the_root_and_back(layout_store: FileStore, parts: list[str]) -> None:
    key = "/" + "/".join(parts)
    path = layout_store.record_path(key)
    names = path.relative_to(layout_store.kv_dir).parts
    assert len(names) == key.count("/"), "one directory level per key segment, never more"
    assert not {".", ".."} & set(names)
    assert not any(n.startswith(".") for n in names), "names starting with '.' are left to temporary files"
    assert os.path.normpath(path) == str(path)
    assert layout_store.layout.key_of(path) == key


def test_the_encoding_is_canonical() -> None:
    assert encode_segment("backend-1_x") == "backend-1_x"
    assert encode_segment("..") == "%2E%2E"
    assert encode_segment("a/b") == "a%2Fb"
    assert encode_segment("") == "%"
    assert encode_segment("é") == "%C3%A9"
    for name in ["%61", "%2e", "a.b", "%2", "%ZZ", "%FF", "é", ""]:
        assert decode_segment(name) is None, f"{name!r} is no encoding's output, so it maps to no key"


def test_too_long_segments_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 251"):
        FileStore(tmp_path).record_path("/services/" + "%" * 100)
    with pytest.raises(ValueError, match="must start with '/'"):
        FileStore(tmp_path).record_path("services/a")


async def test_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    os.umask(0o022)
    store = FileStore(tmp_path / "kv")
    lease = await store.grant(10)
    assert await store.create("/services/ns/c/e/1", b"v", lease.id) is None
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [store.root, *store.root.rglob("*")]}
    assert {p: m for p, m in modes.items() if p.is_dir() and m != 0o700} == {}
    assert {p: m for p, m in modes.items() if p.is_file() and m != 0o600} == {}
    assert sorted(str(p.relative_to(store.root)) for p in modes if p.is_file()) == [
        "kv/services/ns/c/e/1.rec",
        f"leases/{lease.id:016x}.lease",
    ]


async def test_create_is_create_if_absent_and_put_replaces(tmp_path: Path) -> None:
    a, b = FileStore(tmp_path), FileStore(tmp_path)  # two stores on one root, as two processes
    la, lb = await a.grant(10), await b.grant(10)
    assert await a.create("/k/1", b"first", la.id) is None
    existing = await b.create("/k/1", b"second", lb.id)
    assert existing is not None
    assert (existing.value, existing.lease_id) == (b"first", la.id)
    await a.put("/k/1", b"changed", la.id)
    assert await b.get_prefix("/k/") == {"/k/1": b"changed"}
    await b.delete("/k/1")
    await b.delete("/k/1")  # deleting an absent key is a no-op
    assert await a.get_prefix("/") == {}
    assert not files(tmp_path, ".tmp-*")


async def test_get_prefix_matches_partial_segments_like_a_string_prefix(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for key in ["/services/ns/c/e/1", "/services/ns2/c/e/2", "/services/ns", "/other/x"]:
        await store.put(key, key.encode(), 0)
    assert set(await store.get_prefix("/services/ns")) == {
        "/services/ns/c/e/1",
        "/services/ns2/c/e/2",
        "/services/ns",
    }
    assert set(await store.get_prefix("/services/ns/")) == {"/services/ns/c/e/1"}
    assert len(await store.get_prefix("")) == 4


# -- liveness -------------------------------------------------------------------------------------------


async def test_a_partial_segment_finds_its_keys_wherever_they_are_in_the_directory(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for n in range(40):  # in whatever order the directory lists them, siblings come between
        await store.put(f"/services/n/c/e/a{n}", b"a", 0)
        await store.put(f"/services/n/c/e/b{n}", b"b", 0)
    found = await store.get_prefix("/services/n/c/e/a")
    assert sorted(found) == sorted(f"/services/n/c/e/a{n}" for n in range(40))


async def test_names_dyndisc_does_not_write_hide_none_of_the_records_beside_them(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for n in range(40):
        await store.put(f"/services/n/c/e/{n}", b"v", 0)
    directory = store.record_path("/services/n/c/e/0").parent
    for stray in ("notes.txt", "%61.rec", "a b", "~x"):  # in whatever order the directory lists them
        (directory / stray).write_text("not ours")
    assert sorted(await store.get_prefix("/services/")) == sorted(f"/services/n/c/e/{n}" for n in range(40))


async def test_keep_alive_refreshes_the_lease_file_mtime(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    lease = await store.grant(10)
    path = store.lease_path(lease.id)
    old = time.time_ns() - 5 * 10**9
    os.utime(path, ns=(old, old))
    assert await store.keep_alive(lease.id) == 10
    assert path.stat().st_mtime_ns > old + 4 * 10**9


async def test_records_of_an_expired_lease_are_gone_for_readers_and_removed(tmp_path: Path) -> None:
    owner, reader = FileStore(tmp_path), FileStore(tmp_path)
    lease = await owner.grant(10)
    await owner.create("/services/n/c/e/1", b"v", lease.id)
    await owner.put("/services/n/c/e/2", b"v", 0)  # no lease: never expires
    expire(owner, lease.id)

    assert await reader.get_prefix("/services/") == {"/services/n/c/e/2": b"v"}
    assert not owner.record_path("/services/n/c/e/1").exists(), "the reader that noticed removed it"
    assert not owner.lease_path(lease.id).exists()
    with pytest.raises(LeaseNotFoundError, match=f"{lease.id:x}"):
        await owner.keep_alive(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await owner.put("/services/n/c/e/3", b"v", lease.id)


async def test_a_dead_lease_does_not_block_its_key(tmp_path: Path) -> None:
    old, new = FileStore(tmp_path), FileStore(tmp_path)
    dead = await old.grant(10)
    await old.create("/k/1", b"old", dead.id)
    expire(old, dead.id)
    live = await new.grant(10)
    assert await new.create("/k/1", b"new", live.id) is None
    assert await old.get_prefix("/k/") == {"/k/1": b"new"}


async def test_revoke_by_another_store_deletes_every_record_of_the_lease(tmp_path: Path) -> None:
    owner, other = FileStore(tmp_path), FileStore(tmp_path)
    lease = await owner.grant(30)
    for i in range(3):
        await owner.create(f"/services/n/c/e{i}/1", b"v", lease.id)
    await other.revoke(lease.id)
    assert not files(tmp_path)
    await other.revoke(lease.id)  # an unknown lease: a no-op


# -- watches --------------------------------------------------------------------------------------------


async def test_watch_reports_changes_from_another_store(tmp_path: Path) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await writer.grant(30)
    await writer.create("/services/n/c/e/1", b"one", lease.id)
    async with watcher.watch("/services/n/") as events:
        assert await next_event(events) == StoreSnapshot(items={"/services/n/c/e/1": b"one"})
        await writer.create("/services/n/c/new-dir/2", b"two", lease.id)  # in a directory made just now
        assert await next_event(events) == StorePut(key="/services/n/c/new-dir/2", value=b"two")
        await writer.put("/services/n/c/e/1", b"uno", lease.id)
        assert await next_event(events) == StorePut(key="/services/n/c/e/1", value=b"uno")
        await writer.put("/services/n2/c/e/1", b"not watched", lease.id)
        await writer.delete("/services/n/c/e/1")
        assert await next_event(events) == StoreDelete(key="/services/n/c/e/1")


async def test_lease_expiry_is_reported_without_any_file_event(tmp_path: Path) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await writer.grant(1.0)
    await writer.create("/services/n/c/e/1", b"v", lease.id)
    async with watcher.watch("/services/n/") as events:
        assert await next_event(events) == StoreSnapshot(items={"/services/n/c/e/1": b"v"})
        started = time.monotonic()
        # Nobody writes anything: only the watch's timer on the lease deadline can notice.
        assert await next_event(events, timeout=1.0 + 0.5) == StoreDelete(key="/services/n/c/e/1")
        assert time.monotonic() - started <= 1.5
    assert not writer.record_path("/services/n/c/e/1").exists()


async def test_kept_alive_leases_are_not_reported_gone(tmp_path: Path) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await writer.grant(0.6)
    await writer.create("/services/n/c/e/1", b"v", lease.id)
    async with watcher.watch("/services/n/") as events:
        assert isinstance(await next_event(events), StoreSnapshot)
        with anyio.move_on_after(2.0) as quiet:  # over three TTLs, renewing at a third of it
            while True:
                await anyio.sleep(0.2)
                await writer.keep_alive(lease.id)
        assert quiet.cancelled_caught
        await writer.revoke(lease.id)
        assert await next_event(events) == StoreDelete(key="/services/n/c/e/1"), "the first event is this one"


async def test_a_revoke_elsewhere_is_seen_at_once(tmp_path: Path) -> None:
    writer, watcher, other = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60), FileStore(tmp_path)
    lease = await writer.grant(30)
    await writer.create("/services/n/c/e/1", b"v", lease.id)
    async with watcher.watch("/services/n/") as events:
        assert isinstance(await next_event(events), StoreSnapshot)
        await other.revoke(lease.id)
        assert await next_event(events, timeout=1.0) == StoreDelete(key="/services/n/c/e/1")


async def test_the_periodic_rescan_recovers_an_event_inotify_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=0.5)
    async with watcher.watch("/services/n/") as events:
        assert await next_event(events) == StoreSnapshot(items={})
        monkeypatch.setattr(FileWatch, "push", lambda self, changes: None)  # inotify goes deaf
        await writer.put("/services/n/c/e/1", b"v", 0)
        assert await next_event(events, timeout=2.0) == StorePut(key="/services/n/c/e/1", value=b"v")


async def test_a_replaced_root_restarts_the_watcher_and_resyncs(tmp_path: Path) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=0.3)
    async with watcher.watch("/services/n/") as a, watcher.watch("/services/n/c/") as b:
        assert await next_event(a) == await next_event(b) == StoreSnapshot(items={})
        # The kv directory is removed and made again under the watcher: inotify says nothing about the new
        # one, so the rescan must notice the replaced directory and restart the watcher.
        shutil.rmtree(watcher.kv_dir)
        watcher.kv_dir.mkdir(mode=0o700)
        await writer.put("/services/n/c/e/1", b"v", 0)
        # Each watch resyncs from a snapshot once the watcher restarted (the rescan may report the new key
        # before it), and ends up holding the key; then it goes on following changes.
        for events in (a, b):
            state: dict[str, bytes] = {}
            snapshots = 0
            with anyio.fail_after(5):
                while not (snapshots and state == {"/services/n/c/e/1": b"v"}):
                    event = await anext(events)
                    if isinstance(event, StoreSnapshot):
                        snapshots += 1
                        state = dict(event.items)
                    elif isinstance(event, StorePut):
                        state[event.key] = event.value
                    else:
                        state.pop(event.key, None)
        await writer.delete("/services/n/c/e/1")
        assert await next_event(a) == await next_event(b) == StoreDelete(key="/services/n/c/e/1")


async def test_closing_the_pumping_watch_hands_the_watcher_over(tmp_path: Path) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    async with watcher.watch("/services/") as b:
        assert await next_event(b) == StoreSnapshot(items={})
        async with watcher.watch("/services/") as a:
            assert await next_event(a) == StoreSnapshot(items={})
        await writer.put("/services/n/c/e/1", b"v", 0)
        assert await next_event(b) == StorePut(key="/services/n/c/e/1", value=b"v")
    assert watcher.changes.pumper is None, "the last watch to close stops the file watcher"


async def test_corrupted_files_are_skipped_with_a_warning_and_the_watch_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path, rescan_interval=60)
    discovery = KvDiscovery(store)
    lease = await discovery.grant_lease(30)
    kv = store.kv_dir / "services" / "n" / "c" / "e"
    kv.mkdir(parents=True)
    good = Instance(namespace="n", component="c", endpoint="e", instance_id=lease.id, transport="tcp://h:1")
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        async with discovery.watch(InstanceQuery(namespace="n")) as events:
            assert await anext(events) == Resync(instances=())
            (kv / "abc.rec").write_bytes(b"\xff\x00 no header")  # a record file written by hand
            (kv / "%61.rec").write_bytes(b"dyndisc-record/1 lease=0\n{}")  # a non-canonical name
            (kv / "notes.txt").write_text("hello")  # a stray file
            (store.lease_dir / "00000000000000ff.lease").write_text("not json")
            (kv / "ff.rec").write_bytes(b"dyndisc-record/1 lease=ff\n{}")  # its lease file is garbage
            (kv / "link.rec").symlink_to("/etc/hostname")  # never followed
            os.mkfifo(kv / "fifo.rec")  # never opened blocking
            await discovery.register(good, lease)
            with anyio.fail_after(PROMPT):
                assert await anext(events) == Added(instance=good)
            assert await discovery.list(InstanceQuery(namespace="n")) == [good]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for name in ["abc.rec", "%61.rec", "notes.txt", "00000000000000ff.lease", "link.rec", "fifo.rec"]:
        assert name in warned, f"no warning names {name}:\n{warned}"
    assert (kv / "abc.rec").exists(), (
        "a corrupted file is skipped, not deleted: someone may want to look at it"
    )


async def test_each_corrupted_file_is_warned_about_once_however_often_it_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path)
    kv = store.kv_dir / "services" / "n" / "c" / "e"
    kv.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (kv / f"{name}.rec").write_bytes(b"no header")
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        for _ in range(3):
            assert await store.get_prefix("/services/") == {}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3, "\n".join(warned)
    (kv / "a.rec").write_bytes(b"another bad version")  # a new version of a file is warned about again
    os.utime(kv / "a.rec", ns=(time.time_ns() + 10**9,) * 2)  # a distinct mtime, on any filesystem
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        assert await store.get_prefix("/services/") == {}
    assert len(caplog.records) == 4


# -- settings -------------------------------------------------------------------------------------------


async def test_from_env_uses_dyn_file_kv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path / "shared"))
    monkeypatch.setenv("DYN_FILE_RESCAN_INTERVAL", "2.5")
    backend = create_backend("file")
    assert isinstance(backend, KvDiscovery)
    assert isinstance(backend.store, FileStore)
    assert (backend.store.root, backend.store.rescan_interval) == (tmp_path / "shared", 2.5)
    assert (tmp_path / "shared" / "leases").is_dir()


def test_the_default_root_is_dyndisc_under_the_temp_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DYN_FILE_KV", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # forget the cached temp dir
    assert file_backend.FileSettings().kv == tmp_path / "dyndisc"


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DYN_FILE_KV", str(tmp_path))
    monkeypatch.setenv("DYN_FILE_RESCAN_INTERVAL", "-1")
    with pytest.raises(ConfigurationError, match="DYN_FILE_RESCAN_INTERVAL"):
        file_backend.from_env()


def test_a_root_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.getuid() == 0:
        os.chown(tmp_path, 65534, 65534)
        theirs = tmp_path
    else:
        theirs = Path("/")
    with pytest.raises(ConfigurationError, match=r"DYN_FILE_KV.*belongs to uid"):
        FileStore(theirs)


def test_an_unusable_root_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigurationError, match=r"cannot use .*a-file/kv as the file backend root"):
        FileStore(tmp_path / "a-file" / "kv")


async def test_a_watch_survives_its_root_being_removed(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    writer, watcher = FileStore(root), FileStore(root, rescan_interval=0.5)
    await writer.put("/services/n/c/e/1", b"v", 0)
    async with watcher.watch("/services/n/") as events:
        assert await next_event(events) == StoreSnapshot(items={"/services/n/c/e/1": b"v"})
        await anyio.to_thread.run_sync(shutil.rmtree, root)
        # The next rescan sees the key gone and the watched directories replaced: it restarts the watcher.
        assert await next_event(events, timeout=2.0) == StoreDelete(key="/services/n/c/e/1")
        assert await next_event(events, timeout=2.0) == StoreSnapshot(items={})
        await writer.put("/services/n/c/e/2", b"w", 0)  # recreates the directories
        assert await next_event(events, timeout=1.0) == StorePut(key="/services/n/c/e/2", value=b"w")


async def test_temporary_files_of_a_writer_killed_mid_write_are_cleaned_up(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put("/services/n/c/e/1", b"v", 0)
    directory = store.record_path("/services/n/c/e/1").parent
    stale, fresh = directory / ".tmp-0123456789abcdef", directory / ".tmp-fedcba9876543210"
    stale.write_bytes(b"half a rec")
    fresh.write_bytes(b"being written")
    old = time.time_ns() - 120 * 10**9
    os.utime(stale, ns=(old, old))
    assert await store.get_prefix("/services/") == {"/services/n/c/e/1": b"v"}, "temp files are never records"
    assert not stale.exists()
    assert fresh.exists(), "a temp file a live writer may still rename is left alone"


async def test_a_stale_leftover_is_judged_by_its_own_age_and_never_followed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put("/services/n/c/e/1", b"v", 0)
    directory = store.record_path("/services/n/c/e/1").parent
    # Links with a writer's temp name (none of dyndisc's): one dangling, one fresh to an old file.
    dangling, fresh = directory / ".tmp-0123456789abcdef", directory / ".tmp-fedcba9876543210"
    old_file = tmp_path / "old"
    old_file.write_text("x")
    old = time.time_ns() - 120 * 10**9
    os.utime(old_file, ns=(old, old))
    dangling.symlink_to(tmp_path / "nothing-here")
    os.utime(dangling, ns=(old, old), follow_symlinks=False)
    fresh.symlink_to(old_file)
    assert await store.get_prefix("/services/") == {"/services/n/c/e/1": b"v"}
    assert not dangling.is_symlink(), "a stale leftover goes, whatever it points to"
    assert fresh.is_symlink(), "a fresh one stays, however old what it points to"
    assert old_file.exists()


async def test_a_corrupted_file_at_a_key_being_registered_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ours (no record header): a registration at its key replaces it, and says so, rather than give up
    on a key it can never create."""
    store = FileStore(tmp_path)
    discovery = KvDiscovery(store)
    lease = await discovery.grant_lease(30)
    good = Instance(namespace="n", component="c", endpoint="e", instance_id=lease.id, transport="tcp://h:1")
    path = store.record_path(discovery.key_for(good))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\x00 no header")
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        assert await discovery.register(good, lease) == good
    assert await discovery.list(InstanceQuery(namespace="n")) == [good]
    assert "replacing corrupted record" in caplog.text
