"""What the console and the API do with studies: search, look up, zip, delete, send.

Service filters are applied here, once, so that pages, API and downloads
agree: a user assigned to services (``User.services``, names of
:class:`~pacscore.models.ServiceFilter`) sees only the studies that one of
them matches.  A study the user may not see answers 404, exactly like a
study that does not exist.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from flask import abort
from peewee import SQL, fn
from peewee import Node as Condition

from pacscore import query
from pacscore.models import Instance, Node, Patient, Series, ServiceFilter, Study, User
from pacscore.users import user_services

DATE_PRESETS = ("any", "today", "yesterday", "week", "month", "year", "exact", "interval")
SORTS = {
    "date": (Study.study_date.desc(), Study.study_time.desc()),
    "name": (Patient.name_key.asc(),),
    "received": (Study.last_received.desc(),),
}
ZIP_CHUNK = 1024 * 1024


def visible_studies(user: User):
    """Studies joined with their patient, restricted to the user's services."""
    studies = Study.select(Study, Patient).join(Patient)
    condition = services_condition(user_services(user))
    return studies if condition is None else studies.where(condition)


def services_condition(names: list[str]) -> Condition | None:
    """The studies a user limited to these service filters sees (None: every study).

    Each name is a :class:`ServiceFilter` (looked up ignoring case); the
    filters add up (OR).  A name no filter defines keeps the meaning service
    names had before named filters: InstitutionName or RequestingService
    equal to it (an authentication plugin may give such names).
    """
    wanted = [name.strip() for name in names if name.strip()]
    if not wanted:
        return None
    defined = {f.name.casefold(): f for f in ServiceFilter.select()}
    condition = None
    for name in wanted:
        found = defined.get(name.casefold())
        part = filter_condition(found) if found else _institution_or_service(name)
        condition = part if condition is None else condition | part
    return condition


def filter_condition(service_filter: ServiceFilter) -> Condition:
    """Every non-empty criterion of the filter (AND); a filter without any matches nothing."""
    criteria = []
    if service_filter.institution:
        criteria.append(_same_text(Study.institution, service_filter.institution))
    if service_filter.requesting_service:
        criteria.append(_same_text(Study.requesting_service, service_filter.requesting_service))
    if service_filter.institution_or_service:
        criteria.append(_institution_or_service(service_filter.institution_or_service))
    if service_filter.modality:
        criteria.append(query.match_modalities(Study.modalities, [service_filter.modality]))
    if not criteria:
        return SQL("1 = 0")  # never every study by mistake
    condition = criteria[0]
    for criterion in criteria[1:]:
        condition = condition & criterion
    return condition


def _same_text(column, value: str) -> Condition:
    # UPPER on both sides: the same function (SQLite's folds ASCII only) whatever the case
    return fn.UPPER(column) == fn.UPPER(value.strip())


def _institution_or_service(value: str) -> Condition:
    return _same_text(Study.institution, value) | _same_text(Study.requesting_service, value)


def date_range(preset: str, exact: str = "", low: str = "", high: str = "") -> str:
    """A DICOM date range (``YYYYMMDD-YYYYMMDD``) for a preset; empty means any date."""
    today = date.today()
    starts = {
        "today": today,
        "yesterday": today - timedelta(days=1),
        "week": today - timedelta(days=7),
        "month": today - timedelta(days=31),
        "year": today - timedelta(days=365),
    }
    if preset in starts:
        end = starts[preset] if preset == "yesterday" else today
        return f"{starts[preset]:%Y%m%d}-{end:%Y%m%d}"
    if preset == "exact" and exact:
        return exact.replace("-", "")
    if preset == "interval" and (low or high):
        return f"{low.replace('-', '')}-{high.replace('-', '')}"
    return ""


def search(user: User, filters: dict[str, Any]):
    """Studies matching the console/API search filters (DICOM wildcard rules)."""
    identifier = {
        "PatientName": filters.get("patient_name", ""),
        "PatientID": filters.get("patient_id", ""),
        "AccessionNumber": filters.get("accession", ""),
        "PatientBirthDate": (filters.get("birth_date") or "").replace("-", ""),
        "ModalitiesInStudy": filters.get("modalities") or [],
        "StudyDate": date_range(
            filters.get("date_preset", "any"),
            filters.get("date", ""),
            filters.get("date_from", ""),
            filters.get("date_to", ""),
        ),
    }
    studies = visible_studies(user)
    for keyword, value in identifier.items():
        condition = query.condition_for(query.ATTRIBUTES[keyword], value)
        if condition is not None:
            studies = studies.where(condition)
    return studies.order_by(*SORTS[filters.get("sort", "date")], Study.id)


def study_or_404(user: User, study_uid: str) -> Study:
    study = visible_studies(user).where(Study.study_uid == study_uid).first()
    if study is None:
        abort(404, "no such study")
    return study


def series_or_404(study: Study, series_uid: str) -> Series:
    series = Series.get_or_none((Series.series_uid == series_uid) & (Series.study == study))
    if series is None:
        abort(404, "no such series")
    return series


def series_of(study: Study) -> list[Series]:
    return list(study.series.order_by(Series.series_number, Series.id))


def instances_of(study: Study, series: Series | None = None):
    instances = Instance.select().join(Series)
    if series is not None:
        return instances.where(Instance.series == series).order_by(Instance.id)
    return instances.where(Series.study == study).order_by(Series.id, Instance.id)


# -- ZIP download -------------------------------------------------------------------


def safe_name(text: str, fallback: str) -> str:
    """A file-name component: no separators, no dot-dot, nothing unprintable."""
    cleaned = re.sub(r"[^A-Za-z0-9._^-]+", "_", text).strip("._") or fallback
    return cleaned[:64]


def zip_name(study: Study, series: Series | None = None) -> str:
    base = safe_name(study.patient.patient_id, "patient") + "_" + safe_name(study.study_uid, "s")
    if series is not None:
        base += "_" + safe_name(series.series_uid, "series")
    return base + ".zip"


class _Pipe:
    """A write-only file for zipfile whose content is taken out piece by piece."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def zip_entries(pacs, study: Study, series: Series | None = None) -> list[tuple[str, Path]]:
    """(member name, file path) of each instance, read from the index now.

    The ZIP is produced after the request ended and its database connection
    went back to the pool: the streaming part must not touch the database.
    Members are ``SERIES_UID/SOP_UID.dcm`` after sanitising: UIDs never
    become paths on their own.
    """
    rows = instances_of(study, series).select(Instance, Series.series_uid).objects().iterator()
    return [
        (
            f"{safe_name(row.series_uid, 'series')}/{safe_name(row.sop_uid, 'i')}.dcm",
            pacs.archive.path_of(row),
        )
        for row in rows
    ]


def zip_stream(entries: list[tuple[str, Path]]) -> Iterator[bytes]:
    """A ZIP of the files, produced a chunk at a time (never whole in memory).

    An unreadable file is skipped and listed in ``ERRORS.txt`` at the end.
    """
    pipe = _Pipe()
    errors = []
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in entries:
            try:
                source = path.open("rb")
            except OSError as exc:
                errors.append(f"{name}: {exc.strerror}")
                continue
            with source, archive.open(name, "w", force_zip64=True) as member:
                while chunk := source.read(ZIP_CHUNK):
                    member.write(chunk)
                    yield pipe.take()
            yield pipe.take()
        if errors:
            archive.writestr("ERRORS.txt", "\n".join(errors) + "\n")
    yield pipe.take()


# -- delete and send ----------------------------------------------------------------


def delete_instances(pacs, study: Study, series: Series | None, actor: str) -> int:
    reason = f"deleted by {actor}"
    return pacs.archive.delete(instances_of(study, series), reason=reason)


def enqueue_send(pacs, study: Study, node: Node, actor: str) -> int:
    payload = {"study_uid": study.study_uid, "node": node.name, "requested_by": actor}
    return pacs.jobs.enqueue("send_study", payload)
