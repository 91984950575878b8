"""A C-STORE commits its index row without waiting for the disk; the ``.ready`` file in
the incoming area is the journal that makes the acknowledged instance survive a power
loss anyway (pacscore/storage.py).

A power loss cannot be pulled here; these tests build, file by file, the states it
or a crash can leave (a journal entry of a dead writer with or without its row,
with or without its final link, a half-written ``.part``) and check what start-up
recovery makes of each, then that a running archive drops its journal once the
commits are durable.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pacscore.config import Config
from pacscore.db import WriterKind, bind_database, connection, is_sqlite, write_transaction
from pacscore.dicomfile import status
from pacscore.dicomfile.part10 import PREAMBLE, encode_file_meta, read_dicom_file
from pacscore.models import Instance, OutboxEvent, Storage, TrashedFile
from pacscore.storage import INCOMING, instance_relpath
from tests.dicomgen import make_instance
from tests.test_outbox import Recorder, drain_all, store


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def incoming(pacs) -> Path:
    return pacs.config.home / "storage" / INCOMING


def final_path(pacs, sop_uid: str) -> Path:
    return pacs.config.home / "storage" / instance_relpath(sop_uid)


def journal_entry(pacs, sop_uid: str, source: Path, suffix: str = ".ready") -> Path:
    """The incoming file a dead writer left for ``source`` (as the archive writes it)."""
    data, ts = read_dicom_file(source)
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", sop_uid, ts, "MODALITY")
    content = PREAMBLE + meta + data
    digest = Path(instance_relpath(sop_uid)).stem
    entry = incoming(pacs) / f"{digest}.{dead_pid()}.0123456789ab.{len(content)}{suffix}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(content)
    return entry


def linked_journal_entry(pacs, sop_uid: str, source: Path) -> tuple[Path, Path]:
    """A dead writer's journal entry whose final link was made: (entry, final)."""
    entry = journal_entry(pacs, sop_uid, source)
    final = final_path(pacs, sop_uid)
    final.parent.mkdir(parents=True)
    os.link(entry, final)
    return entry, final


def indexed(sop_uid: str) -> bool:
    with connection():
        return Instance.select().where(Instance.sop_uid == sop_uid).exists()


def test_a_commit_undone_by_a_power_loss_is_redone_from_the_journal(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    source = make_instance(tmp_path / "in", patient_id="POWER", sop_uid="1.2.3.77.1.1")
    entry = journal_entry(pacs, "1.2.3.77.1.1", source)

    pacs.recover()

    assert indexed("1.2.3.77.1.1")
    final = final_path(pacs, "1.2.3.77.1.1")
    assert read_dicom_file(final)[0] == read_dicom_file(source)[0]
    assert not entry.exists() and list(incoming(pacs).iterdir()) == []
    # plugins hear of it: its first on_store was lost with the commit
    assert drain_all(pacs) == 1
    assert [i.sop_uid for i in recorder.stored] == ["1.2.3.77.1.1"]
    assert recorder.stored[0].patient_id == "POWER"


def test_a_final_link_that_outlived_its_commit_is_indexed_again(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.2.1")
    _, final = linked_journal_entry(pacs, "1.2.3.77.2.1", source)

    pacs.recover()

    assert indexed("1.2.3.77.2.1")
    assert read_dicom_file(final)[0] == read_dicom_file(source)[0]
    assert list(incoming(pacs).iterdir()) == []


@pytest.mark.parametrize(
    ("suffix", "keep"),
    [(".part", 2000), (".ready", -100)],
    ids=["half-written-part", "ready-cut-short-by-a-power-loss"],
)
def test_a_never_acknowledged_file_of_a_dead_writer_is_discarded(make_pacs, tmp_path, suffix, keep):
    """A ``.part`` is never whole; a ``.ready`` shorter than its name says lost its tail
    to a power loss before its fsync (the header is whole, the pixels are not)."""
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.3.1")
    entry = journal_entry(pacs, "1.2.3.77.3.1", source, suffix=suffix)
    entry.write_bytes(entry.read_bytes()[:keep])

    pacs.recover()

    assert not indexed("1.2.3.77.3.1")
    assert not final_path(pacs, "1.2.3.77.3.1").exists()
    assert list(incoming(pacs).iterdir()) == []


def test_a_ready_file_named_as_before_sizes_were_recorded_is_indexed(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.11.1")
    entry = journal_entry(pacs, "1.2.3.77.11.1", source)
    digest, pid, random, _size, suffix = entry.name.split(".")
    entry.rename(entry.with_name(f"{digest}.{pid}.{random}.{suffix}"))

    pacs.recover()

    assert indexed("1.2.3.77.11.1")
    assert list(incoming(pacs).iterdir()) == []


def test_an_unreadable_journal_entry_is_kept_and_the_server_starts(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.4.1")
    entry = journal_entry(pacs, "1.2.3.77.4.1", source)
    entry.write_bytes(b"not DICOM ".ljust(entry.stat().st_size, b"!"))  # whole, unreadable

    pacs.recover()  # logs the failure, does not raise

    assert entry.exists(), "evidence of an acknowledged instance is never deleted"
    assert not indexed("1.2.3.77.4.1")


def test_a_crash_after_the_commit_keeps_one_copy_and_drops_the_journal(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.5.1")
    assert store(pacs, source).ok
    (entry,) = incoming(pacs).iterdir()  # not flushed yet: the journal entry is there
    final = final_path(pacs, "1.2.3.77.5.1")
    assert entry.suffix == ".ready" and os.path.samefile(entry, final)
    # the writer dies (kill -9): its commit survives, its journal entry stays
    digest, _, rest = entry.name.split(".", 2)
    orphan = entry.rename(entry.with_name(f"{digest}.{dead_pid()}.{rest}"))

    pacs.recover()

    assert not orphan.exists()
    with connection():
        assert Instance.select().where(Instance.sop_uid == "1.2.3.77.5.1").count() == 1
    assert read_dicom_file(final)[0] == read_dicom_file(source)[0]


def test_the_journal_is_dropped_once_the_commits_are_durable(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    sources = [
        make_instance(tmp_path / "in", sop_uid=f"1.2.3.77.6.{i}", series_uid="1.2.3.77.6")
        for i in range(1, 4)
    ]
    for source in sources:
        assert store(pacs, source).ok
    assert len(list(incoming(pacs).iterdir())) == 3

    assert pacs.archive.folders.flush() == 3

    assert list(incoming(pacs).iterdir()) == []
    for i, source in enumerate(sources, start=1):
        final = final_path(pacs, f"1.2.3.77.6.{i}")
        assert read_dicom_file(final)[0] == read_dicom_file(source)[0]
        assert final.stat().st_nlink == 1
    with connection():
        assert OutboxEvent.select().count() == 3  # each on_store recorded once
    assert pacs.archive.folders.flush() == 0


def test_a_live_writers_incoming_files_are_left_alone(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.7.1")
    data, ts = read_dicom_file(source)
    digest = Path(instance_relpath("1.2.3.77.7.1")).stem
    writing = incoming(pacs) / f"{digest}.{os.getpid()}.0123456789ab.{len(data)}.part"
    writing.parent.mkdir(parents=True, exist_ok=True)
    writing.write_bytes(PREAMBLE + data[:100])

    pacs.recover()

    assert writing.exists()
    assert not indexed("1.2.3.77.7.1")


def test_deleting_an_instance_deletes_its_journal_entry_and_frees_the_space(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.8.1")
    assert store(pacs, source).ok
    final = final_path(pacs, "1.2.3.77.8.1")
    assert final.stat().st_nlink == 2  # the final name and the journal entry

    with connection():
        assert pacs.archive.delete(Instance.select(), reason="test") == 1

    assert not final.exists()
    assert list(incoming(pacs).iterdir()) == []  # no link left holding the blocks
    pacs.recover()  # and nothing comes back
    assert not indexed("1.2.3.77.8.1")


def test_a_crash_between_a_deletion_and_its_unlinks_does_not_bring_it_back(make_pacs, tmp_path):
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.9.1")
    # the state after the deletion committed: rows gone, file in the trash,
    # and the journal entry of the (now dead) process that stored it
    _, final = linked_journal_entry(pacs, "1.2.3.77.9.1", source)
    with connection():
        storage = Storage.get(Storage.name == "default")
        TrashedFile.create(storage=storage, path=instance_relpath("1.2.3.77.9.1"))

    pacs.recover()

    assert not indexed("1.2.3.77.9.1")
    assert not final.exists()
    assert list(incoming(pacs).iterdir()) == []


def test_a_zombie_writers_journal_is_recovered(make_pacs, tmp_path):
    """A listener killed with its parent stays a zombie until init reaps it: dead all the same."""
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.10.1")
    entry = journal_entry(pacs, "1.2.3.77.10.1", source)
    zombie = subprocess.Popen(["true"])  # exited, not waited for: a zombie
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    digest, _, rest = entry.name.split(".", 2)
    entry.rename(entry.with_name(f"{digest}.{zombie.pid}.{rest}"))

    pacs.recover()
    zombie.wait()

    assert indexed("1.2.3.77.10.1")
    assert list(incoming(pacs).iterdir()) == []


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named-part"])
def test_a_write_that_fails_midway_leaves_no_file(make_pacs, tmp_path, unnamed):
    """A disk error in the middle of a file: nothing half-written stays anywhere."""
    pacs = make_pacs()
    folders = pacs.archive.folders
    folders._tmpfile = unnamed
    relpath = instance_relpath("1.2.3.77.12.1")

    class Chunks(list):
        """Sized like the data (first pass); the disk fills up while writing (second)."""

        passes = 0

        def __iter__(self):
            self.passes += 1
            return super().__iter__() if self.passes == 1 else self.fail_after_first()

        def fail_after_first(self):
            yield self[0]
            raise OSError(28, "No space left on device")

    with connection():
        storage = Storage.get(Storage.name == "default")
    with pytest.raises(OSError, match="No space"):
        folders.write_incoming(storage, relpath, Chunks([b"\0" * 128, b"\0" * 64]))

    assert files_under(pacs.config.home / "storage") == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named-part"])
def test_both_ways_of_creating_a_file_store_the_same_bytes(make_pacs, tmp_path, unnamed):
    """Unnamed files (O_TMPFILE) where the file system has them, named .part files
    elsewhere: the stored file and its journal entry are the same."""
    pacs = make_pacs()
    pacs.archive.folders._tmpfile = unnamed
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.13.1")

    assert store(pacs, source).ok

    final = final_path(pacs, "1.2.3.77.13.1")
    (entry,) = incoming(pacs).iterdir()
    assert entry.suffix == ".ready" and os.path.samefile(entry, final)
    assert int(entry.name.split(".")[3]) == final.stat().st_size
    assert read_dicom_file(final)[0] == read_dicom_file(source)[0]
    assert files_under(pacs.config.home / "storage") == sorted([entry, final])


def cached_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of ``path``): mincore(2) of a mapping."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, *[ctypes.c_int] * 3, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        vector = ctypes.create_string_buffer(pages)
        try:
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(byte & 1 for byte in vector.raw), pages


@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "keep_stored_in_cache"])
def test_a_large_stored_file_leaves_the_page_cache_once_durable(make_pacs, tmp_path, db_url, keep):
    """By default: files written into ever new pages are slow in a virtual machine
    (storage.SyncThreads).  ``keep_stored_in_cache = true`` keeps them; small files,
    cheaper kept than dropped, stay either way."""
    Config(home=tmp_path / "home", db_url=db_url, keep_stored_in_cache=keep).save()
    pacs = make_pacs()
    large = make_instance(tmp_path / "in", sop_uid="1.2.3.77.14.1", rows=256, columns=512)
    small = make_instance(tmp_path / "in", sop_uid="1.2.3.77.14.2")
    assert store(pacs, large).ok and store(pacs, small).ok

    cached, pages = cached_pages(final_path(pacs, "1.2.3.77.14.1"))
    assert pages > 32  # 256 KiB of pixels
    assert cached == (pages if keep else 0)
    cached, pages = cached_pages(final_path(pacs, "1.2.3.77.14.2"))
    assert cached == pages
    assert read_dicom_file(final_path(pacs, "1.2.3.77.14.1"))[0] == read_dicom_file(large)[0]


# pixels enough for a file a store alone indexes while it is fsynced (OVERLAP_MIN_BYTES)
OVERLAPPED = {"rows": 128, "columns": 512}


def storage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("pacscore-flush", "pacscore-fsync")]


def test_the_flush_and_fsync_threads_end_once_idle(make_pacs, tmp_path):
    """An idle archive holds no thread (an embedding application, a test process that
    forks)."""
    pacs = make_pacs()
    assert store(pacs, make_instance(tmp_path / "in", sop_uid="1.2.3.77.14.1", **OVERLAPPED)).ok
    flusher = pacs.archive.folders._flusher
    assert flusher is not None and flusher.is_alive()
    assert {t.name for t in storage_threads()} == {"pacscore-flush", "pacscore-fsync"}

    for thread in storage_threads():
        thread.join(timeout=10)

    assert storage_threads() == []
    assert list(incoming(pacs).iterdir()) == []  # the flush thread flushed before ending
    assert store(pacs, make_instance(tmp_path / "in", sop_uid="1.2.3.77.14.2")).ok
    assert indexed("1.2.3.77.14.2")
    assert pacs.archive.folders._flusher.is_alive()  # the next store starts another


def test_the_index_commit_waits_until_the_file_is_durable(make_pacs, tmp_path, monkeypatch):
    """The rows are written while the file's fsync runs on a pool thread, but nobody
    sees them before that fsync has returned: a power loss cannot leave a row
    without its file."""
    pacs = make_pacs()
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.15.1", **OVERLAPPED)
    seen_during_fsync = []
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.2)  # the index rows are written meanwhile
        seen_during_fsync.append(indexed("1.2.3.77.15.1"))  # another connection's view
        real_fsync(fd)

    monkeypatch.setattr("pacscore.storage.os.fsync", slow_fsync)
    assert store(pacs, source).ok

    assert seen_during_fsync and not any(seen_during_fsync)
    assert indexed("1.2.3.77.15.1")


def test_a_failed_fsync_refuses_the_instance_and_keeps_nothing(make_pacs, tmp_path, monkeypatch):
    """An I/O error when syncing the file: the peer is told, the rows written meanwhile
    are rolled back, no file stays, and the next instance is stored."""
    recorder = Recorder()
    pacs = make_pacs(recorder)
    first = make_instance(tmp_path / "in", sop_uid="1.2.3.77.16.1", **OVERLAPPED)
    second = make_instance(tmp_path / "in", sop_uid="1.2.3.77.16.2")
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("pacscore.storage.os.fsync", failing_fsync)
    result = store(pacs, first)

    assert result.status == status.OUT_OF_RESOURCES
    assert [(kind, "Input/output error" in message) for kind, message, _ in recorder.alerts] == [
        ("file_save_error", True)
    ]
    assert not indexed("1.2.3.77.16.1")
    assert files_under(pacs.config.home / "storage") == []
    with connection():
        assert not OutboxEvent.select().exists()

    monkeypatch.setattr("pacscore.storage.os.fsync", real_fsync)
    assert store(pacs, second).ok and indexed("1.2.3.77.16.2")


def hold_a_transaction(url: str, home: str, store: bool, entered, leave) -> None:
    """Another process: a write transaction, a store's or not, held until told."""
    bind_database(url, Path(home))
    with connection(), write_transaction(WriterKind.STORE if store else WriterKind.OTHER):
        entered.set()
        leave.wait(30)


def queue_behind_another_process(pacs, store: bool) -> None:
    """A store's write transaction that waits for one of another process."""
    context = multiprocessing.get_context("spawn")
    entered, leave = context.Event(), context.Event()
    child = context.Process(
        target=hold_a_transaction,
        args=(pacs.config.db_url, str(pacs.config.home), store, entered, leave),
    )
    child.start()
    try:
        assert entered.wait(30)
        threading.Timer(0.3, leave.set).start()
        with connection(), write_transaction(WriterKind.STORE):
            pass
    finally:
        leave.set()
        child.join(30)


@pytest.mark.parametrize(
    "company",
    [
        "alone",
        "alone-with-a-small-file",
        "with-another-store",
        "after-queueing-behind-a-store",
        "after-queueing-behind-another-writer",
    ],
)
def test_only_a_store_alone_holds_the_write_lock_during_its_fsync(
    make_pacs, tmp_path, monkeypatch, company
):
    """Alone, a store of a large file writes its rows while its file is fsynced, holding
    SQLite's write lock; with other stores running in its process, or when its stores
    lately queued behind one of another process, that lock would stall them, so the
    fsync comes first and the lock stays free meanwhile.  Other writers (the outbox,
    jobs) wait.  A small file is fsynced first too: faster than the hand-over."""
    pacs = make_pacs()
    if not is_sqlite():
        pytest.skip("SQLite's database-wide write lock")
    size = {} if company == "alone-with-a-small-file" else OVERLAPPED
    source = make_instance(tmp_path / "in", sop_uid="1.2.3.77.17.1", **size)
    real_fsync = os.fsync
    lock_free_during_fsync = []

    def observing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            return real_fsync(fd)  # the journal flush's, not the stored file's
        time.sleep(0.3)  # a store writing its rows meanwhile has taken the lock by now
        other = sqlite3.connect(pacs.database.database, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            lock_free_during_fsync.append(True)
        except sqlite3.OperationalError:  # database is locked
            lock_free_during_fsync.append(False)
        finally:
            other.close()
        real_fsync(fd)

    store(pacs, make_instance(tmp_path / "in", sop_uid="1.2.3.77.17.0"))  # folders made
    monkeypatch.setattr("pacscore.storage.os.fsync", observing_fsync)
    if company == "with-another-store":
        pacs.archive._storing.__enter__()
    elif company.startswith("after-queueing"):
        queue_behind_another_process(pacs, store=company.endswith("a-store"))
    assert store(pacs, source).ok

    alone = company in ("alone", "after-queueing-behind-another-writer")
    assert lock_free_during_fsync == [not alone]
    assert indexed("1.2.3.77.17.1")
