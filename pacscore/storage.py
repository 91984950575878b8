"""Storage folders: where a new file goes, how it is written durably, and
how a restart finishes or discards writes that a crash interrupted.

A file is written to ``<folder>/.incoming/<name>.<random>.part`` and fsynced
(with its directory); then its index row is committed; then it is renamed
to its final place ``<folder>/<aa>/<bb>/<name>.dcm``, where ``name`` is a
SHA-256 of the SOP Instance UID (UIDs are never used as paths).  At start-up
:func:`recover_incoming` renames the ``.part`` files whose row exists and
deletes those of dead writers, which were never acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pacscore.models import Instance, Storage

log = logging.getLogger(__name__)

INCOMING = ".incoming"
MB = 1024 * 1024


class StorageFull(Exception):
    """No enabled storage folder can take the file without going under its limit."""


def instance_relpath(sop_uid: str) -> str:
    digest = hashlib.sha256(sop_uid.encode("ascii", "replace")).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StorageFolders:
    """The storage folders of the archive, cached briefly to keep the hot path lean."""

    CACHE_SECONDS = 2.0

    def __init__(self) -> None:
        self._cache: list[Storage] = []
        self._loaded_at = 0.0
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()

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
                free = free_bytes(Path(storage.path))
            except OSError as exc:
                log.error("storage %s unavailable: %s", storage.name, exc)
                continue
            if free - size > storage.min_free_mb * MB:
                return storage
        raise StorageFull("no storage folder has room above its free-space limit")

    def absolute(self, storage: Storage, relpath: str) -> Path:
        return Path(storage.path) / relpath

    def write_incoming(self, storage: Storage, relpath: str, chunks: Iterable[bytes]) -> Path:
        """Write ``chunks`` durably under the folder's incoming area; return its path."""
        incoming_dir = Path(storage.path) / INCOMING
        self._ensure_dir(incoming_dir)
        name = Path(relpath).stem
        # the writer's pid in the name: recovery never discards a live writer's file
        part = incoming_dir / f"{name}.{os.getpid()}.{secrets.token_hex(6)}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            part.unlink(missing_ok=True)
            raise
        os.close(fd)
        # the directory entry must survive a power loss too: recovery looks for it
        _fsync_dir(incoming_dir)
        return part

    def publish(self, part: Path, storage: Storage, relpath: str) -> Path:
        """Move a committed incoming file to its final place."""
        final = self.absolute(storage, relpath)
        self._ensure_dir(final.parent)
        os.replace(part, final)
        return final

    def _ensure_dir(self, path: Path) -> None:
        if path in self._known_dirs:
            return
        path.mkdir(parents=True, exist_ok=True)
        self._known_dirs.add(path)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def recover_incoming(storages: list[Storage]) -> tuple[int, int]:
    """Finish or discard the writes a crash interrupted; return (published, discarded)."""
    published = discarded = 0
    for storage in storages:
        incoming_dir = Path(storage.path) / INCOMING
        if not incoming_dir.is_dir():
            continue
        for part in incoming_dir.glob("*.part"):
            digest, pid = part.name.split(".")[:2]
            relpath = f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"
            final = Path(storage.path) / relpath
            indexed = (
                Instance.select()
                .where((Instance.storage == storage.id) & (Instance.path == relpath))
                .exists()
            )
            try:
                if indexed and not final.exists():
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(part, final)
                    published += 1
                elif not _alive(pid):
                    part.unlink()
                    discarded += 1
            except FileNotFoundError:  # its writer finished it meanwhile
                continue
    if published or discarded:
        log.warning(
            "recovered interrupted writes: %d published, %d discarded", published, discarded
        )
    return published, discarded
