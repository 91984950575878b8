"""The archive: store an instance (policy, disk, index, events) and delete one.

Both the DICOM Storage SCP and ``pacscore import`` call :meth:`Archive.store`;
a success means the file is fsynced and its index row committed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peewee import fn

from pacscore import sql
from pacscore.db import WriterKind, stores_queued_within, utcnow, write_transaction
from pacscore.dicomfile import status
from pacscore.dicomfile.header import Header, InvalidDicom, read_header
from pacscore.dicomfile.part10 import PREAMBLE, encode_file_meta, read_dicom_file
from pacscore.dicomfile.text import normalize_text
from pacscore.models import Instance, Patient, Series, Study, TrashedFile
from pacscore.storage import PendingWrite, StorageFolders, StorageFull, instance_relpath

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

# a store that queued this recently behind a store of another process has company: it
# does not hold the write lock through its fsync (see Archive._write_and_index)
QUEUED_SECONDS = 1.0
# smaller files fsync faster than handing the fsync to another thread pays back
OVERLAP_MIN_BYTES = 64 * 1024


@dataclass
class IncomingInstance:
    """What ``filter_store`` sees: the indexed header and where it comes from."""

    header: Header
    transfer_syntax: str
    size: int
    calling_ae: str
    called_ae: str = ""
    source: str = "dicom"


@dataclass
class StoredInstance:
    """What ``on_store`` receives; ``path`` is the absolute path of the file."""

    sop_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    transfer_syntax: str
    path: str
    size: int
    calling_ae: str
    received_at: str
    called_ae: str = ""


@dataclass
class DeletedInstance:
    """What ``on_delete`` receives."""

    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    reason: str


@dataclass
class StoreResult:
    status: int
    comment: str = ""
    duplicate: bool = False
    instance: StoredInstance | None = None

    @property
    def ok(self) -> bool:
        return self.status == status.SUCCESS


def _insert_or_get(model, unique: str, key: str, values: dict) -> tuple[int, bool]:
    """Insert a row unless its unique key exists; return (id, created)."""
    row_id = sql.select_value(model, "id", unique, key)
    if row_id is not None:
        return row_id, False
    row_id = sql.insert_ignore(model, {unique: key, **values})
    if row_id is not None:
        return row_id, True
    return sql.select_value(model, "id", unique, key), False


class _Counter:
    """How many threads are inside ``with counter:``."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> _Counter:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.count -= 1


class Archive:
    def __init__(self, pacs: Pacs) -> None:
        self.pacs = pacs
        self.folders = StorageFolders(
            pacs.config.sync_directories, pacs.config.keep_stored_in_cache
        )
        self._storing = _Counter()  # stores indexing their file now

    # -- storing -------------------------------------------------------------

    def store(
        self,
        data: bytes,
        transfer_syntax: str,
        calling_ae: str = "",
        called_ae: str = "",
        source: str = "dicom",
    ) -> StoreResult:
        """Store one data set (the bytes after the file meta), exactly as received."""
        try:
            header = read_header(data, transfer_syntax)
        except InvalidDicom as exc:
            return StoreResult(status.CANNOT_UNDERSTAND, str(exc))
        meta = encode_file_meta(header.sop_class_uid, header.sop_uid, transfer_syntax, calling_ae)
        size = len(PREAMBLE) + len(meta) + len(data)
        incoming = IncomingInstance(header, transfer_syntax, size, calling_ae, called_ae, source)

        refusal = self.pacs.hooks.relay.filter_store(pacs=self.pacs, instance=incoming)
        if refusal:
            log.warning("refused %s from %s: %s", header.sop_uid, calling_ae or source, refusal)
            return StoreResult(status.REFUSED_BY_FILTER, str(refusal)[:64])

        overwrite = self.pacs.settings.core["overwrite_duplicates"]
        if not overwrite and sql.select_value(Instance, "id", "sop_uid", header.sop_uid):
            return StoreResult(status.SUCCESS, "duplicate: kept the stored instance", True)

        try:
            storage = self.folders.choose(size)
        except StorageFull as exc:
            self.pacs.alert("storage_full", str(exc), sop_uid=header.sop_uid, size=size)
            return StoreResult(status.OUT_OF_RESOURCES, "out of storage space")

        relpath = instance_relpath(header.sop_uid)
        try:
            pending, stored = self._write_and_index(
                storage, relpath, (PREAMBLE, meta, data), header, incoming, overwrite
            )
        except OSError as exc:  # writing or fsyncing the file: the database raises its own
            return self._cannot_write(storage, relpath, exc)
        except Exception as exc:
            log.exception("indexing %s failed", header.sop_uid)
            self.pacs.alert("file_save_error", f"cannot index {header.sop_uid}: {exc}")
            return StoreResult(status.OUT_OF_RESOURCES, "cannot index the instance")
        if stored is None:
            pending.discard()
            return StoreResult(status.SUCCESS, "duplicate: kept the stored instance", True)

        try:
            self.folders.publish(pending.ready, storage, relpath, journal=True)
        except OSError as exc:
            # the row is committed and the .ready file durable: start-up recovery publishes it
            log.error("cannot move %s to its place (recovered at restart): %s", pending.ready, exc)
        self.pacs.outbox.wake()
        return StoreResult(status.SUCCESS, instance=stored)

    def _write_and_index(
        self,
        storage,
        relpath: str,
        chunks: tuple[bytes, ...],
        header: Header,
        incoming: IncomingInstance,
        overwrite: bool,
    ) -> tuple[PendingWrite, Any]:
        """Write the file, then index it, committing once it is durable (the ``.ready``
        file is the journal that redoes the commit after a power loss); return the
        write and the stored instance (None: a duplicate kept).  On an error the file
        is deleted and the error raised.

        A store alone, of a file of ``OVERLAP_MIN_BYTES`` or more, writes its rows
        while a sync thread fsyncs the file, holding SQLite's write lock meanwhile.
        Any other store fsyncs first, in its own thread: that lock would stall the
        stores of its process, or of another process it lately queued behind, and a
        small file's fsync is over before the hand-over pays back.
        """
        with self._storing:
            overlap = (
                incoming.size >= OVERLAP_MIN_BYTES
                and self._storing.count == 1
                and not stores_queued_within(QUEUED_SECONDS)
            )
            pending = self.folders.begin_incoming(storage, relpath, chunks, background=overlap)
            try:
                if not overlap:
                    pending.wait()
                stored = self._index(
                    header,
                    incoming,
                    storage,
                    relpath,
                    overwrite,
                    writer=WriterKind.STORE,
                    before_commit=pending.wait if overlap else None,
                )
            except BaseException:
                pending.discard()
                raise
        return pending, stored

    def _cannot_write(self, storage, relpath: str, exc: OSError) -> StoreResult:
        self.pacs.alert("file_save_error", f"cannot write {relpath}: {exc}", storage=storage.name)
        return StoreResult(status.OUT_OF_RESOURCES, "cannot write the file")

    def _index(
        self,
        h: Header,
        incoming: IncomingInstance,
        storage,
        relpath: str,
        overwrite: bool,
        writer: WriterKind = WriterKind.OTHER,
        before_commit: Callable[[], object] | None = None,
    ):
        """Index one file; ``before_commit`` (waiting for the file's fsync) runs last in
        the transaction, whose commit its exception cancels.  ``writer``: a C-STORE's
        commit (``WriterKind.STORE``) does not wait for the disk, its file's journal
        does."""
        now = utcnow()
        with write_transaction(writer):
            existing_id = sql.select_value(Instance, "id", "sop_uid", h.sop_uid)
            if existing_id is not None:
                if not overwrite:
                    return None
                existing = Instance.get_by_id(existing_id)
                self._remove_rows([existing], trash=existing.storage_id != storage.id)
            patient_id, _ = _insert_or_get(
                Patient,
                "patient_id",
                h.patient_id,
                {
                    "patient_name": h.patient_name,
                    "name_key": normalize_text(h.patient_name),
                    "birth_date": h.birth_date[:8],
                    "sex": h.sex[:16],
                },
            )
            study_id, _ = _insert_or_get(
                Study,
                "study_uid",
                h.study_uid,
                {
                    "patient": patient_id,
                    "study_date": h.study_date[:8],
                    "study_time": h.study_time[:16],
                    "accession_number": h.accession_number[:64],
                    "study_id": h.study_id[:64],
                    "description": h.study_description[:324],
                    "referring_physician": h.referring_physician[:324],
                    "referring_key": normalize_text(h.referring_physician)[:324],
                    "institution": h.institution[:324],
                    "requesting_service": h.requesting_service[:324],
                    "first_received": now,
                    "last_received": now,
                },
            )
            series_id, new_series = _insert_or_get(
                Series,
                "series_uid",
                h.series_uid,
                {
                    "study": study_id,
                    "modality": h.modality[:16],
                    "series_number": h.series_number[:12],
                    "description": h.series_description[:324],
                    "body_part": h.body_part[:64],
                    "station_name": h.station_name[:64],
                    "series_date": h.series_date[:8],
                    "series_time": h.series_time[:16],
                    "first_received": now,
                    "last_received": now,
                },
            )
            sql.insert(
                Instance,
                {
                    "sop_uid": h.sop_uid,
                    "series": series_id,
                    "sop_class_uid": h.sop_class_uid,
                    "instance_number": h.instance_number[:12],
                    "transfer_syntax": incoming.transfer_syntax,
                    "storage": storage.id,
                    "path": relpath,
                    "size": incoming.size,
                    "received_at": now,
                    "calling_ae": incoming.calling_ae[:16],
                    "called_ae": incoming.called_ae[:16],
                },
            )
            counts = {"num_instances": 1, "size": incoming.size}
            sql.add_to_counters(Series, series_id, counts, {"last_received": now})
            study_values: dict[str, Any] = {"last_received": now, "stable": False}
            if new_series:
                counts["num_series"] = 1
                modalities = sql.select_value(Study, "modalities", "id", study_id) or "\\"
                if h.modality and f"\\{h.modality}\\" not in modalities:
                    study_values["modalities"] = modalities + h.modality + "\\"
            sql.add_to_counters(Study, study_id, counts, study_values)
            stored = StoredInstance(
                sop_uid=h.sop_uid,
                sop_class_uid=h.sop_class_uid,
                series_uid=h.series_uid,
                study_uid=h.study_uid,
                patient_id=h.patient_id,
                modality=h.modality,
                transfer_syntax=incoming.transfer_syntax,
                path=os.path.join(storage.path, relpath),
                size=incoming.size,
                calling_ae=incoming.calling_ae,
                received_at=now.isoformat(),
                called_ae=incoming.called_ae,
            )
            self.pacs.outbox.enqueue("on_store", instance=stored)
            if before_commit is not None:
                before_commit()
        return stored

    def index_existing(self, header: Header, transfer_syntax: str, storage, relpath: str):
        """Index a file already in a storage folder (reindex); None if already indexed."""
        size = self.folders.absolute(storage, relpath).stat().st_size
        incoming = IncomingInstance(header, transfer_syntax, size, "", source="reindex")
        return self._index(header, incoming, storage, relpath, overwrite=False)

    def recover_ready(self, storage, ready: Path, relpath: str) -> None:
        """Start-up recovery: index a complete incoming file whose commit a power loss
        undid (its sender had the success), then publish it; on_store fires again."""
        data, transfer_syntax = read_dicom_file(ready)
        header = read_header(data, transfer_syntax)
        size = ready.stat().st_size
        incoming = IncomingInstance(header, transfer_syntax, size, "", source="recovery")
        self._index(header, incoming, storage, relpath, overwrite=False)
        self.folders.publish(ready, storage, relpath)

    # -- reading -------------------------------------------------------------

    def path_of(self, instance: Instance) -> Path:
        return self.folders.absolute(self.folders.by_id(instance.storage_id), instance.path)

    def study_patient_id(self, study_uid: str) -> str | None:
        """The PatientID already indexed for a study, or None for a new study."""
        patient = sql.select_value(Study, "patient", "study_uid", study_uid)
        if patient is None:
            return None
        return sql.select_value(Patient, "patient_id", "id", patient)

    # -- deleting ------------------------------------------------------------

    def delete(self, instances, reason: str, unlink: bool = True) -> int:
        """Delete instances (a query or list of :class:`Instance`) with their files.

        Index rows go first, in one transaction that also records the files to
        unlink (``TrashedFile``) and the ``on_delete`` events; the files are
        unlinked after the commit.  A crash in between leaves trash that the
        next start empties: never a row without a file nor a file without a row.
        ``unlink=False`` only forgets rows whose file is already gone.
        """
        rows = list(instances)
        if not rows:
            return 0
        with write_transaction():
            described = self._describe(
                Instance.id.in_(chunk) for chunk in _chunks([r.id for r in rows])
            )
            self._announce(described, reason)
            self._remove_rows(rows, trash=unlink)
        self.empty_trash()
        self.pacs.outbox.wake()
        return len(rows)

    def delete_series(
        self,
        series_uids: Iterable[str],
        reason: str,
        actor: str,
        received_before: datetime | None = None,
        **details: Any,
    ) -> DeletionReport:
        """Delete whole series (rows, then files), audited once per study.

        Same crash safety as :meth:`delete`, with set-based statements so that
        thousands of instances go in one transaction.  ``reason`` reaches
        ``on_delete``; the audit trail gets one ``delete`` event per study
        (``actor``, the reason, its series, instance count, bytes freed and
        ``details``).  With ``received_before``, instances received at or
        after that time are kept (a series that grew since it was chosen).
        Series already gone are ignored.
        """
        report = DeletionReport()
        uids = list(dict.fromkeys(series_uids))
        if not uids:
            return report
        with write_transaction():
            conditions = []
            for chunk in _chunks(uids):
                condition = Series.series_uid.in_(chunk)
                if received_before is not None:
                    condition &= Instance.received_at < received_before
                conditions.append(condition)
            described = self._describe(conditions)
            if not described:
                return report
            self._announce(described, reason)
            self._remove([(d.id, d.storage_id, d.path, d.series_id) for d in described], True)
            self._audit_deletion(report, described, reason, actor, details)
        self.empty_trash()
        self.pacs.outbox.wake()
        return report

    def retention_holds(self, study_uids: list[str]) -> dict[str, str]:
        """Ask ``retention_holds``: ``{study_uid: "plugin: reason"}`` for the studies to keep.

        Automatic deletions call this before :meth:`delete_series`.  A plugin
        that raises (or answers something else than a dict) holds every study
        of the batch, as the hook's contract says.
        """
        if not study_uids:
            return {}
        asked = set(study_uids)
        answers, failed = self.pacs.hooks.relay.retention_holds(
            pacs=self.pacs, study_uids=list(study_uids)
        )
        holds: dict[str, str] = {}
        for plugin, answer in answers:
            if not isinstance(answer, dict):
                failed.append(plugin)
                continue
            for uid, why in answer.items():
                if uid in asked:
                    holds.setdefault(uid, f"{plugin}: {why}")
        for plugin in failed:
            for uid in study_uids:
                holds.setdefault(uid, f"{plugin}: failed to answer, held")
        return holds

    @staticmethod
    def _describe(conditions) -> list[_Doomed]:
        rows = []
        for condition in conditions:
            query = (
                Instance.select(
                    Instance.id,
                    Instance.sop_uid,
                    Instance.storage,
                    Instance.path,
                    Instance.size,
                    Instance.series,
                    Series.series_uid,
                    Study.study_uid,
                    Patient.patient_id,
                )
                .join(Series)
                .join(Study)
                .join(Patient)
                .where(condition)
            )
            rows += [_Doomed(*row) for row in query.tuples()]
        return rows

    def _announce(self, described: list[_Doomed], reason: str) -> None:
        self.pacs.outbox.enqueue_many(
            "on_delete",
            [
                {
                    "instance": DeletedInstance(
                        d.sop_uid, d.series_uid, d.study_uid, d.patient_id, reason
                    )
                }
                for d in described
            ],
        )

    @staticmethod
    def _audit_deletion(report, described, reason: str, actor: str, details) -> None:
        from pacscore import audit

        by_study: dict[str, list[_Doomed]] = {}
        for d in described:
            by_study.setdefault(d.study_uid, []).append(d)
        for study_uid, items in by_study.items():
            series = sorted({d.series_uid for d in items})
            freed = sum(d.size for d in items)
            audit.record(
                "delete",
                actor,
                target=study_uid,
                reason=reason,
                patient_id=items[0].patient_id,
                series=series,
                instances=len(items),
                bytes=freed,
                **details,
            )
            report.studies[study_uid] = {"series": series, "instances": len(items), "bytes": freed}
            report.series += len(series)
            report.instances += len(items)
            report.bytes += freed

    def _remove_rows(self, rows: list[Instance], trash: bool) -> None:
        """Delete instance rows, refresh counters and drop emptied parents (in a transaction)."""
        self._remove([(r.id, r.storage_id, r.path, r.series_id) for r in rows], trash)

    def _remove(self, items: list[tuple[int, int, str, int]], trash: bool) -> None:
        """``items``: (instance id, storage id, path, series id); in a transaction."""
        if trash:
            for chunk in _chunks(items):
                TrashedFile.insert_many(
                    [{"storage": storage, "path": path} for _, storage, path, _ in chunk]
                ).execute()
        for chunk in _chunks([item[0] for item in items]):
            Instance.delete().where(Instance.id.in_(chunk)).execute()
        series_ids = list({item[3] for item in items})
        study_ids: set[int] = set()
        for chunk in _chunks(series_ids):
            study_ids |= {
                s.study_id for s in Series.select(Series.study).where(Series.id.in_(chunk))
            }
            self._refresh_series(chunk)
        patient_ids: set[int] = set()
        for chunk in _chunks(list(study_ids)):
            patient_ids |= {
                s.patient_id for s in Study.select(Study.patient).where(Study.id.in_(chunk))
            }
            emptied = set(chunk) - {
                row[0]
                for row in Series.select(Series.study).where(Series.study.in_(chunk)).tuples()
            }
            if emptied:
                Study.delete().where(Study.id.in_(list(emptied))).execute()
            for study_id in set(chunk) - emptied:
                self._refresh_study(study_id)
        for chunk in _chunks(list(patient_ids)):
            kept = {
                row[0]
                for row in Study.select(Study.patient).where(Study.patient.in_(chunk)).tuples()
            }
            if set(chunk) - kept:
                Patient.delete().where(Patient.id.in_(list(set(chunk) - kept))).execute()

    @staticmethod
    def _refresh_series(series_ids: list[int]) -> None:
        """Recount series after instance rows went; drop the emptied ones (few statements)."""
        counts = {
            series_id: (count, size)
            for series_id, count, size in Instance.select(
                Instance.series, fn.COUNT(Instance.id), fn.SUM(Instance.size)
            )
            .where(Instance.series.in_(series_ids))
            .group_by(Instance.series)
            .tuples()
        }
        emptied = [series_id for series_id in series_ids if series_id not in counts]
        if emptied:
            Series.delete().where(Series.id.in_(emptied)).execute()
        for series_id, (count, size) in counts.items():
            Series.update(num_instances=count, size=size).where(Series.id == series_id).execute()

    @staticmethod
    def _refresh_study(study_id: int) -> None:
        series = list(
            Series.select(Series.modality, Series.num_instances, Series.size).where(
                Series.study == study_id
            )
        )
        if not series:
            Study.delete().where(Study.id == study_id).execute()
            return
        modalities = sorted({s.modality for s in series if s.modality})
        Study.update(
            num_series=len(series),
            num_instances=sum(s.num_instances for s in series),
            size=sum(s.size for s in series),
            modalities=("\\" + "\\".join(modalities) + "\\") if modalities else "",
        ).where(Study.id == study_id).execute()

    def empty_trash(self) -> int:
        """Unlink the files of deleted rows (after the deletion committed, and at start)."""
        removed = 0
        last_id = 0
        while True:
            items = list(
                TrashedFile.select()
                .where(TrashedFile.id > last_id)
                .order_by(TrashedFile.id)
                .limit(_CHUNK)
            )
            if not items:
                return removed
            last_id = items[-1].id
            # a file stored again at the same place since (same UID) is kept
            stored_again = set(
                Instance.select(Instance.storage, Instance.path)
                .where(Instance.path.in_([item.path for item in items]))
                .tuples()
            )
            doomed = [item for item in items if (item.storage_id, item.path) not in stored_again]
            # a journal entry is a second link of the file (no space freed without it),
            # and start-up recovery must not index a deleted instance from it
            for storage_id in {item.storage_id for item in doomed}:
                self.folders.drop_journal_entries(
                    self.folders.by_id(storage_id),
                    [item.path for item in doomed if item.storage_id == storage_id],
                )
            emptied = []
            for item in items:
                try:
                    if (item.storage_id, item.path) not in stored_again:
                        storage = self.folders.by_id(item.storage_id)
                        self.folders.absolute(storage, item.path).unlink(missing_ok=True)
                except OSError as exc:
                    log.error("cannot remove %s: %s", item.path, exc)
                    continue
                emptied.append(item.id)
            if emptied:
                TrashedFile.delete().where(TrashedFile.id.in_(emptied)).execute()
            removed += len(emptied)


_CHUNK = 500


def _chunks(items: list) -> Iterator[list]:
    """Slices small enough for one SQL statement's parameters (SQLite's limit)."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


@dataclass
class _Doomed:
    """An instance chosen for deletion, with what ``on_delete`` and the audit need."""

    id: int
    sop_uid: str
    storage_id: int
    path: str
    size: int
    series_id: int
    series_uid: str
    study_uid: str
    patient_id: str


@dataclass
class DeletionReport:
    """What :meth:`Archive.delete_series` removed; ``studies`` by Study Instance UID."""

    instances: int = 0
    bytes: int = 0
    series: int = 0
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
