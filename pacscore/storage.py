"""Storage folders: where a new file goes, how it is written durably, and
how a restart finishes or discards writes that a crash interrupted.

A file is written as an unnamed file (``O_TMPFILE``) in its final folder
``<folder>/<aa>/<bb>/``, where ``name`` below is a SHA-256 of the SOP
Instance UID (UIDs are never used as paths); once every byte is written it
is linked as ``<folder>/.incoming/<name>.<pid>.<random>.<size>.ready``, then
fsynced: on the journaling file systems of Linux (ext4, XFS, btrfs) that one
fsync makes the data and the new name durable together (``sync_directories``
adds an fsync of the directory, for file systems where it does not).  Where
``O_TMPFILE`` is missing, the file is written as ``.incoming/….part`` and
renamed ``.ready``.  Then its index row is committed; then it is published
at its final place ``<folder>/<aa>/<bb>/<name>.dcm``.  The size in the name
tells recovery whether a ``.ready`` file that a power loss interrupted
before its fsync is whole.

When the commit was synchronous the ``.ready`` file is simply renamed.  A
C-STORE commits without waiting for the disk (see ``write_transaction``):
its ``.ready`` name is then hard-linked to the final place and kept as a
journal entry until :meth:`StorageFolders.flush` (about every second) has
synced the file system and the index; a power loss before that can undo the
commit but not the ``.ready`` file, which start-up recovery indexes again.

At start-up :func:`recover_incoming` looks at the files of dead writers:
indexed ones are published (or their journal entry dropped), ``.ready``
ones without a row are handed back to be indexed unless they were deleted
since (trash) or are shorter than their name says, and ``.part`` ones,
never acknowledged, are deleted (an unnamed file vanishes with its writer).
Deleting an instance deletes its journal entry with its file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pacscore.db import connection, make_commits_durable
from pacscore.models import Instance, Storage, TrashedFile

log = logging.getLogger(__name__)

INCOMING = ".incoming"
MB = 1024 * 1024
# how long a commit made without waiting for the disk may stay undurable
FLUSH_SECONDS = 1.0
# fsyncs in flight at once per process (one per association storing)
SYNC_THREADS = 8
# a sync thread without work this long ends (an idle archive holds no thread)
SYNC_THREAD_IDLE_SECONDS = 2.0
# the smallest file dropped from the page cache once durable (see SyncThreads)
DROP_FROM_CACHE_BYTES = 128 * 1024


class StorageFull(Exception):
    """No enabled storage folder can take the file without going under its limit."""


def instance_relpath(sop_uid: str) -> str:
    digest = hashlib.sha256(sop_uid.encode("ascii", "replace")).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def _sync_file_system(path: Path) -> None:
    """syncfs(2): one journal commit makes every new link on that file system durable
    (an fsync per final folder would cost one each)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400


def _link_unnamed(fd: int, path: str | Path) -> None:
    """Give the unnamed (O_TMPFILE) file open as ``fd`` the name ``path``: linkat(2)
    of ``/proc/self/fd/N`` with AT_SYMLINK_FOLLOW (os.link passes that flag only
    along with a directory fd)."""
    source = f"/proc/self/fd/{fd}".encode()
    if _libc.linkat(AT_FDCWD, source, AT_FDCWD, os.fsencode(path), AT_SYMLINK_FOLLOW) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


def _unlink_if_present(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    """Write every chunk, in one writev(2) unless the kernel takes less."""
    views = [memoryview(chunk) for chunk in chunks if len(chunk)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


class PendingWrite:
    """A file written and named ``.ready`` whose fsync runs on a sync thread."""

    def __init__(self, ready: str) -> None:
        self.ready = ready  # a string: pathlib cost the hot path 3% of its CPU
        self.error: OSError | None = None
        self.done = threading.Lock()  # released by the sync thread
        self.done.acquire()

    def wait(self) -> str:
        """Block until the file is durable and return its ``.ready`` path; on an
        error of the fsync, delete it and raise that OSError."""
        self.done.acquire()
        self.done.release()  # a second wait returns at once
        if self.error is not None:
            self.discard()
            raise self.error
        return self.ready

    def discard(self) -> None:
        """Delete the file, durable or not (an fsync still running finishes harmlessly)."""
        _unlink_if_present(self.ready)


class SyncThreads:
    """Threads that fsync files handed over by writers: a queue and a lock per file,
    lighter than a ThreadPoolExecutor (whose submit() cost a 9 KB C-STORE about 4%
    of its CPU).  One thread per writer waiting at most: started as needed, up to
    ``SYNC_THREADS``, ended after ``SYNC_THREAD_IDLE_SECONDS`` without work."""

    def __init__(self, sync_directories: bool, keep_in_cache: bool) -> None:
        """``keep_in_cache=False`` drops each file of ``DROP_FROM_CACHE_BYTES`` or more
        from the page cache once durable.

        Written into ever new pages, a stream of files spreads the page cache over
        memory never used before; in a virtual machine each first touch of a page
        costs the host a fault: copying the data into the cache then took a third
        of a 525 KB C-STORE's time (perf, on the bench machine), and dropping the
        pages raised the rate of one association from about 310 to 440 instances/s.
        A file read soon after (routing) then comes from the disk.  Smaller files
        stay: the call costs more than the few pages they hold (4 associations of
        9 KB instances lost 10% with every file dropped).
        """
        self.sync_directories = sync_directories
        self.keep_in_cache = keep_in_cache
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fd: int, incoming_dir: str, pending: PendingWrite, size: int) -> None:
        with self._lock:
            if self._idle == 0 and self._threads < SYNC_THREADS:
                self._threads += 1
                self._idle += 1
                threading.Thread(target=self._run, name="pacscore-fsync", daemon=True).start()
            # queued under the lock: an idle thread that ends sees it, or was not counted
            self._queue.put((fd, incoming_dir, pending, size))

    def _run(self) -> None:
        while True:
            try:
                fd, incoming_dir, pending, size = self._queue.get(timeout=SYNC_THREAD_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._threads -= 1
                        self._idle -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            try:
                self.sync(fd, incoming_dir, pending, size)
            finally:
                with self._lock:
                    self._idle += 1

    def sync(self, fd: int, incoming_dir: str, pending: PendingWrite, size: int) -> None:
        """Make the file durable, close it and release ``pending`` (any thread)."""
        try:
            os.fsync(fd)
            if not self.keep_in_cache and size >= DROP_FROM_CACHE_BYTES:
                # clean once fsynced: the next file reuses these pages (see __init__);
                # only advice, whose failure must not fail the store
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if self.sync_directories:
                _fsync_dir(Path(incoming_dir))
        except OSError as exc:
            pending.error = exc
        finally:
            os.close(fd)
            pending.done.release()


class StorageFolders:
    """The storage folders of the archive, cached briefly to keep the hot path lean."""

    CACHE_SECONDS = 2.0

    def __init__(self, sync_directories: bool = False, keep_in_cache: bool = False) -> None:
        self.sync_directories = sync_directories
        self._tmpfile = hasattr(os, "O_TMPFILE")
        self._cache: list[Storage] = []
        self._loaded_at = 0.0
        self._known_dirs: set[str] = set()
        self._lock = threading.Lock()
        # journal entries (.ready names) of commits not yet known durable
        self._journal: list[tuple[str, str | Path]] = []
        self._journal_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._sync_threads = SyncThreads(sync_directories, keep_in_cache)

    def all(self) -> list[Storage]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self.CACHE_SECONDS:
                self._cache = list(Storage.select().order_by(Storage.position, Storage.id))
                self._loaded_at = time.monotonic()
            return self._cache

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = 0.0

    def by_id(self, storage_id: int) -> Storage:
        for storage in self.all():
            if storage.id == storage_id:
                return storage
        self.invalidate()
        return Storage.get_by_id(storage_id)

    def choose(self, size: int) -> Storage:
        """The first enabled folder that keeps more than its limit after writing ``size``."""
        for storage in self.all():
            if not storage.enabled:
                continue
            try:
                free = free_bytes(storage.path)
            except OSError as exc:
                log.error("storage %s unavailable: %s", storage.name, exc)
                continue
            if free - size > storage.min_free_mb * MB:
                return storage
        raise StorageFull("no storage folder has room above its free-space limit")

    def absolute(self, storage: Storage, relpath: str) -> Path:
        return Path(storage.path) / relpath

    def write_incoming(self, storage: Storage, relpath: str, chunks: Sequence[bytes]) -> str:
        """Write ``chunks`` durably under the folder's incoming area; return the ``.ready`` path."""
        return self.begin_incoming(storage, relpath, chunks).wait()

    def begin_incoming(
        self, storage: Storage, relpath: str, chunks: Sequence[bytes], background: bool = True
    ) -> PendingWrite:
        """Write ``chunks`` and name them ``.ready`` under the folder's incoming area,
        then fsync them in the background: :meth:`PendingWrite.wait` tells when the
        file is durable (a C-STORE writes its index rows meanwhile).  With
        ``background=False`` the fsync runs in this thread before returning, for a
        caller that would wait for it at once (no hand-over to a sync thread)."""
        # strings, not Paths, on this path: pathlib's parsing cost a 9 KB C-STORE 5% of its CPU
        incoming_dir = os.path.join(storage.path, INCOMING)
        if self._ensure_dir(incoming_dir):
            _fsync_dir(Path(storage.path))  # once: the area itself must survive a power loss
        final_dir = os.path.join(storage.path, os.path.dirname(relpath))
        self._ensure_dir(final_dir)
        size = sum(len(chunk) for chunk in chunks)
        # the writer's pid: recovery never discards a live writer's file; the size: it
        # never indexes a .ready file cut short by a power loss before its fsync
        digest = os.path.basename(relpath).removesuffix(".dcm")
        name = f"{digest}.{os.getpid()}.{secrets.token_hex(6)}.{size}"
        ready = f"{incoming_dir}/{name}.ready"
        fd, part = self._create(final_dir, f"{incoming_dir}/{name}.part")
        try:
            _write_all(fd, chunks)
            # named .ready before the fsync: the fsync then commits the name with the data
            if part is None:
                _link_unnamed(fd, ready)
            else:
                os.rename(part, ready)
            pending = PendingWrite(ready)
        except BaseException:
            os.close(fd)
            for leftover in (part, ready):
                if leftover is not None:
                    _unlink_if_present(leftover)
            raise
        if background:
            self._sync_threads.submit(fd, incoming_dir, pending, size)
        else:
            self._sync_threads.sync(fd, incoming_dir, pending, size)
        return pending

    def _create(self, final_dir: str, part: str) -> tuple[int, str | None]:
        """A new file to write: unnamed (O_TMPFILE) in its final folder, else ``part``.

        An unnamed file gets a name only once it is whole, so a crash leaves
        nothing behind; and its inode is allocated in the final folder's block
        group, as a file created there would be: creating every file in
        ``.incoming`` made ext4 search other groups for a free inode once that
        folder's group was full (0.4 ms per file on the bench machine).
        """
        if self._tmpfile:
            try:
                return os.open(final_dir, os.O_TMPFILE | os.O_WRONLY, 0o640), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise  # a full disk, a permission: the store fails as it would anyway
                log.info("no O_TMPFILE in %s (%s): named .part files", final_dir, exc.strerror)
                self._tmpfile = False
        return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), part

    def publish(
        self, ready: str | Path, storage: Storage, relpath: str, journal: bool = False
    ) -> None:
        """Move a committed incoming file to its final place.

        ``journal=True`` (the commit did not wait for the disk) keeps the
        ``.ready`` name as a second link until the next :meth:`flush`.
        """
        final = os.path.join(storage.path, relpath)
        self._ensure_dir(os.path.dirname(final))
        if not journal:
            os.replace(ready, final)
            # rename(2) leaves both names when they already are links of one file
            _unlink_if_present(ready)
            return
        try:
            os.link(ready, final)
        except FileExistsError:  # an overwritten instance: replace it atomically
            spare = f"{final}.{secrets.token_hex(6)}.tmp"
            os.link(ready, spare)
            os.replace(spare, final)
        with self._journal_lock:
            self._journal.append((storage.path, ready))
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_while_journaled, name="pacscore-flush", daemon=True
                )
                self._flusher.start()

    def flush(self) -> int:
        """Make the published files and their commits durable, then drop their journal
        entries; return how many."""
        with self._journal_lock:
            batch, self._journal = self._journal, []
        if not batch:
            return 0
        for root in {root for root, _ in batch}:
            _sync_file_system(Path(root))
        with connection():
            make_commits_durable()
        for _, ready in batch:
            _unlink_if_present(ready)
        return len(batch)

    def drop_journal_entries(self, storage: Storage, relpaths: list[str]) -> int:
        """Delete the ``.ready`` journal entries (of any process) of deleted files."""
        digests = {Path(relpath).stem for relpath in relpaths}
        incoming_dir = Path(storage.path) / INCOMING
        try:
            names = os.listdir(incoming_dir)
        except FileNotFoundError:
            return 0
        dropped = 0
        for name in names:
            if name.endswith(".ready") and name.split(".", 1)[0] in digests:
                (incoming_dir / name).unlink(missing_ok=True)
                dropped += 1
        return dropped

    def _flush_while_journaled(self) -> None:
        """The flush thread: about every second while entries wait, then it ends (the
        next publish starts another), so that an idle archive holds no thread."""
        while True:
            time.sleep(FLUSH_SECONDS)
            with self._journal_lock:
                if not self._journal:
                    self._flusher = None
                    return
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - retried; recovery covers the journal anyway
                log.exception("cannot flush the storage journal")

    def _ensure_dir(self, path: str) -> bool:
        """Create ``path`` unless known to exist; True the first time this process sees it."""
        if path in self._known_dirs:
            return False
        os.makedirs(path, exist_ok=True)
        self._known_dirs.add(path)
        return True


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # a killed listener whose parent died too stays a zombie until init reaps it
    try:
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _whole(ready: Path) -> bool:
    """Whether a ``.ready`` file has the size its name records (names without one,
    written before the size was recorded, were fsynced before their rename)."""
    fields = ready.name.split(".")
    if len(fields) < 5:
        return True
    whole = ready.stat().st_size == int(fields[3])
    if not whole:
        log.warning("%s is shorter than written (never acknowledged): discarded", ready)
    return whole


def recover_incoming(
    storages: list[Storage], reindex: Callable[[Storage, Path, str], None]
) -> tuple[int, int, int]:
    """Finish or discard the writes a crash interrupted; return (published, reindexed,
    discarded).  ``reindex(storage, ready_path, relpath)`` indexes and publishes a
    complete file whose commit a power loss undid; a file in the trash (deleted
    after it was stored) is not indexed again.  Run before emptying the trash."""
    published = reindexed = discarded = 0
    for storage in storages:
        incoming_dir = Path(storage.path) / INCOMING
        if not incoming_dir.is_dir():
            continue
        for entry in sorted(incoming_dir.iterdir()):
            digest, pid, *_ = entry.name.split(".") + [""]
            if _alive(pid):
                continue
            relpath = f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"
            final = Path(storage.path) / relpath
            indexed = (
                Instance.select()
                .where((Instance.storage == storage.id) & (Instance.path == relpath))
                .exists()
            )
            deleted = (
                TrashedFile.select()
                .where((TrashedFile.storage == storage.id) & (TrashedFile.path == relpath))
                .exists()
            )
            try:
                if indexed and not final.exists():
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(entry, final)
                    published += 1
                elif indexed:
                    entry.unlink()  # a journal entry: the final link exists
                elif entry.suffix == ".ready" and not deleted and _whole(entry):
                    reindex(storage, entry, relpath)
                    reindexed += 1
                else:
                    entry.unlink()
                    discarded += 1
            except FileNotFoundError:
                continue
            except Exception:  # noqa: BLE001 - the server must start; the file stays
                log.exception("cannot index %s again: left in place", entry)
    if published or reindexed or discarded:
        log.warning(
            "recovered interrupted writes: %d published, %d indexed again, %d discarded",
            published,
            reindexed,
            discarded,
        )
    return published, reindexed, discarded
