"""``pacscore import`` (files into the archive) and ``pacscore reindex``
(the index rebuilt from, or checked against, the storage folders)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pacscore.db import connection
from pacscore.dicomfile.header import InvalidDicom, read_header
from pacscore.dicomfile.part10 import load_dataset_bytes, read_dicom_file
from pacscore.models import Instance, Storage
from pacscore.storage import INCOMING


@dataclass
class ImportReport:
    imported: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()

    def step(self) -> None:
        self.done += 1
        if self.enabled and (self.done == self.total or self.done % 10 == 0):
            width = 40
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r[{bar}] {self.done}/{self.total}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def import_paths(pacs, paths: list[Path], progress: bool = True) -> ImportReport:
    report = ImportReport()
    files = list(iter_files(paths))
    bar = Progress(len(files), progress)
    with connection():
        for path in files:
            try:
                data, transfer_syntax = load_dataset_bytes(path)
            except (InvalidDicom, OSError) as exc:
                report.rejected.append((str(path), str(exc)))
                bar.step()
                continue
            result = pacs.archive.store(data, transfer_syntax, source="import")
            if result.duplicate:
                report.duplicates += 1
            elif result.ok:
                report.imported += 1
            else:
                report.rejected.append((str(path), result.comment))
            bar.step()
    # this process ends here: its journal entries would linger until the server restarts
    pacs.archive.folders.flush()
    return report


# -- reindex ----------------------------------------------------------------------


@dataclass
class IndexCheck:
    missing_files: list[str] = field(default_factory=list)  # rows without a file
    unindexed_files: list[str] = field(default_factory=list)  # files without a row

    @property
    def consistent(self) -> bool:
        return not self.missing_files and not self.unindexed_files


def _stored_files(storage: Storage) -> Iterator[str]:
    root = Path(storage.path)
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != INCOMING]
        for name in files:
            if name.endswith(".dcm"):
                yield str((Path(dirpath) / name).relative_to(root))


def check_index(pacs) -> IndexCheck:
    check = IndexCheck()
    with connection():
        for storage in Storage.select():
            indexed = {
                row.path
                for row in Instance.select(Instance.path).where(Instance.storage == storage)
            }
            on_disk = set(_stored_files(storage))
            root = Path(storage.path)
            check.missing_files += sorted(str(root / p) for p in indexed - on_disk)
            check.unindexed_files += sorted(str(root / p) for p in on_disk - indexed)
    return check


def reindex(pacs) -> tuple[int, int]:
    """Index files that have no row, drop rows whose file is gone; return (added, removed)."""
    added = removed = 0
    with connection():
        for storage in Storage.select():
            root = Path(storage.path)
            indexed = {
                row.path: row.id
                for row in Instance.select(Instance.id, Instance.path).where(
                    Instance.storage == storage
                )
            }
            on_disk = set(_stored_files(storage))
            for relpath in sorted(on_disk - set(indexed)):
                try:
                    data, ts = read_dicom_file(root / relpath)
                    pacs.archive.index_existing(read_header(data, ts), ts, storage, relpath)
                    added += 1
                except (InvalidDicom, OSError) as exc:
                    print(f"skipped {root / relpath}: {exc}", file=sys.stderr)
            gone = [indexed[p] for p in set(indexed) - on_disk]
            if gone:
                removed += pacs.archive.delete(
                    Instance.select().where(Instance.id.in_(gone)),
                    reason="reindex: file missing",
                    unlink=False,
                )
    return added, removed
