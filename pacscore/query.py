"""DICOM matching (PS3.4 C.2.2.2) translated to SQL over the index.

One small matching function per matching type; :func:`find` answers C-FIND
identifiers and :func:`matching_instances` selects what C-MOVE/C-GET send.
The console and the API use the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from peewee import SQL, Node, NodeList, Value, fn
from pydicom.multival import MultiValue

from pacscore.db import is_sqlite
from pacscore.dicomfile.text import normalize_text
from pacscore.models import Instance, Patient, Series, Study

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
LEVEL_KEYS = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}


class QueryError(ValueError):
    """The identifier cannot be answered (bad level, malformed range...)."""


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: str
    column: Any  # a peewee column or expression, None when not matchable
    kind: str  # text, name, uid, date, time, modalities, count


_studies = Study.alias("patient_studies")


def _patient_total(column) -> Node:
    return _studies.select(fn.COALESCE(fn.SUM(column), 0)).where(_studies.patient == Patient.id)


ATTRIBUTES = {
    a.keyword: a
    for a in [
        Attribute("PatientID", PATIENT, Patient.patient_id, "text"),
        Attribute("PatientName", PATIENT, Patient.patient_name, "name"),
        Attribute("PatientBirthDate", PATIENT, Patient.birth_date, "date"),
        Attribute("PatientSex", PATIENT, Patient.sex, "text"),
        Attribute(
            "NumberOfPatientRelatedStudies",
            PATIENT,
            _studies.select(fn.COUNT(_studies.id)).where(_studies.patient == Patient.id),
            "count",
        ),
        Attribute(
            "NumberOfPatientRelatedSeries", PATIENT, _patient_total(_studies.num_series), "count"
        ),
        Attribute(
            "NumberOfPatientRelatedInstances",
            PATIENT,
            _patient_total(_studies.num_instances),
            "count",
        ),
        Attribute("StudyInstanceUID", STUDY, Study.study_uid, "uid"),
        Attribute("StudyDate", STUDY, Study.study_date, "date"),
        Attribute("StudyTime", STUDY, Study.study_time, "time"),
        Attribute("AccessionNumber", STUDY, Study.accession_number, "text"),
        Attribute("StudyID", STUDY, Study.study_id, "text"),
        Attribute("StudyDescription", STUDY, Study.description, "text"),
        Attribute("ReferringPhysicianName", STUDY, Study.referring_physician, "name"),
        Attribute("InstitutionName", STUDY, Study.institution, "text"),
        Attribute("RequestingService", STUDY, Study.requesting_service, "text"),
        Attribute("ModalitiesInStudy", STUDY, Study.modalities, "modalities"),
        Attribute("NumberOfStudyRelatedSeries", STUDY, Study.num_series, "count"),
        Attribute("NumberOfStudyRelatedInstances", STUDY, Study.num_instances, "count"),
        Attribute("SeriesInstanceUID", SERIES, Series.series_uid, "uid"),
        Attribute("Modality", SERIES, Series.modality, "text"),
        Attribute("SeriesNumber", SERIES, Series.series_number, "text"),
        Attribute("SeriesDescription", SERIES, Series.description, "text"),
        Attribute("BodyPartExamined", SERIES, Series.body_part, "text"),
        Attribute("StationName", SERIES, Series.station_name, "text"),
        Attribute("SeriesDate", SERIES, Series.series_date, "date"),
        Attribute("SeriesTime", SERIES, Series.series_time, "time"),
        Attribute("NumberOfSeriesRelatedInstances", SERIES, Series.num_instances, "count"),
        Attribute("SOPInstanceUID", IMAGE, Instance.sop_uid, "uid"),
        Attribute("SOPClassUID", IMAGE, Instance.sop_class_uid, "uid"),
        Attribute("InstanceNumber", IMAGE, Instance.instance_number, "text"),
    ]
}


# -- matching functions, one per matching type ----------------------------------


def _values(value: Any) -> list[str]:
    """The values of an identifier element: a str, a PersonName or a MultiValue."""
    if value is None:
        return []
    if isinstance(value, list | tuple | MultiValue):
        return [str(v).strip() for v in value]
    return [v.strip() for v in str(value).split("\\")]


def is_universal(value: Any) -> bool:
    values = [v for v in _values(value) if v]
    return not values or values == ["*"]


def has_wildcards(text: str) -> bool:
    return "*" in text or "?" in text


def like_pattern(text: str) -> str:
    """DICOM wildcards to an SQL LIKE pattern with ``!`` as escape character."""
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_")


def glob_pattern(text: str) -> str:
    """DICOM wildcards to an SQLite GLOB pattern: only ``[`` is special besides ``*?``."""
    return text.replace("[", "[[]")


def like(column, pattern: str) -> Node:
    """Wildcard matching, case-sensitive on both databases.

    SQLite's LIKE ignores ASCII case (PostgreSQL's does not): GLOB is its
    case-sensitive equivalent, and can use an index for a prefix.
    """
    if is_sqlite():
        return NodeList((column, SQL("GLOB"), Value(glob_pattern(pattern))))
    return NodeList((column, SQL("LIKE"), Value(like_pattern(pattern)), SQL("ESCAPE '!'")))


def match_text(column, value: str) -> Node:
    return like(column, value) if has_wildcards(value) else column == value


# person-name columns and their upper-case, accent-free copies
NAME_KEYS = {Patient.patient_name: Patient.name_key, Study.referring_physician: Study.referring_key}


def match_name(attribute: Attribute, value: str) -> Node:
    """Person names match ignoring case and accents."""
    key = normalize_text(value)
    column = NAME_KEYS[attribute.column]
    return like(column, key) if has_wildcards(key) else column == key


def match_range(column, value: str, width: int, pad_low: str, pad_high: str) -> Node:
    """Single value or range ``A-B``, ``A-``, ``-B`` over fixed-format strings."""
    value = value.replace(":", "")
    if "-" not in value:
        if has_wildcards(value):
            return like(column, value)
        if len(value) < width and pad_low == "0":  # a partial time matches its span
            return (column >= value.ljust(width, "0")) & (column <= value.ljust(width, "9") + "~")
        return column == value
    low, _, high = value.partition("-")
    if not low and not high:
        raise QueryError(f"empty range {value!r}")
    condition = None
    if low:
        condition = column >= low.ljust(width, pad_low)
    if high:
        upper = column <= high.ljust(width, pad_high) + ("~" if pad_high != "0" else "")
        condition = upper if condition is None else condition & upper
    # empty values never match a range
    return condition & (column != "")


def match_modalities(column, values: list[str]) -> Node:
    expression = None
    for modality in values:
        token = like(column, f"*\\{modality}\\*")
        expression = token if expression is None else expression | token
    return expression


def condition_for(attribute: Attribute, value: Any) -> Node | None:
    """The SQL condition for one identifier attribute, or None for universal matching."""
    if attribute.kind == "count" or is_universal(value):
        return None
    values = [v for v in _values(value) if v]
    column = attribute.column
    if attribute.kind == "uid":
        return column.in_(values) if len(values) > 1 else column == values[0]
    if attribute.kind == "modalities":
        return match_modalities(column, values)
    if attribute.kind == "date":
        return match_range(column, values[0], 8, "0", "9")
    if attribute.kind == "time":
        return match_range(column, values[0], 6, "0", "9")
    if attribute.kind == "name":
        return _any(match_name(attribute, v) for v in values)
    return _any(match_text(column, v) for v in values)


def _any(conditions: Iterable[Node]) -> Node:
    result = None
    for condition in conditions:
        result = condition if result is None else (result | condition)
    return result


# -- queries ----------------------------------------------------------------


def _select_at(level: str, columns: list) -> Any:
    if level == PATIENT:
        return Patient.select(*columns)
    if level == STUDY:
        return Study.select(*columns).join(Patient)
    if level == SERIES:
        return Series.select(*columns).join(Study).join(Patient)
    return Instance.select(*columns).join(Series).join(Study).join(Patient)


def _conditions(level: str, identifier: dict[str, Any]) -> list[Node]:
    depth = LEVELS.index(level)
    conditions = []
    for keyword, value in identifier.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or LEVELS.index(attribute.level) > depth:
            continue
        condition = condition_for(attribute, value)
        if condition is not None:
            conditions.append(condition)
    return conditions


def _where(query, conditions: list[Node]):
    for condition in conditions:
        query = query.where(condition)
    return query


def find(level: str, identifier: dict[str, Any], limit: int) -> Iterator[dict[str, Any]]:
    """Rows matching ``identifier`` at ``level``, with the requested keys filled.

    Yields at most ``limit`` rows; the caller asks for ``limit + 1`` to learn
    that the result was cut.
    """
    if level not in LEVELS:
        raise QueryError(f"unknown query level {level!r}")
    depth = LEVELS.index(level)
    wanted = set(identifier) | {LEVEL_KEYS[level]}
    columns = [
        a.column.alias(a.keyword)
        for a in ATTRIBUTES.values()
        if a.keyword in wanted and LEVELS.index(a.level) <= depth
    ]
    model_id = {PATIENT: Patient.id, STUDY: Study.id, SERIES: Series.id, IMAGE: Instance.id}[level]
    query = _where(_select_at(level, columns), _conditions(level, identifier))
    yield from query.order_by(model_id).limit(limit).dicts().iterator()


def matching_instances(level: str, identifier: dict[str, Any]):
    """The Instance rows a C-MOVE/C-GET identifier designates."""
    if level not in LEVELS:
        raise QueryError(f"unknown query level {level!r}")
    conditions = _conditions(level, identifier)
    if not conditions:
        raise QueryError("the identifier designates nothing: give at least one unique key")
    query = Instance.select(Instance).join(Series).join(Study).join(Patient)
    return _where(query, conditions).order_by(Instance.id)


def response_value(keyword: str, value: Any) -> Any:
    """Index value to the value of a DICOM element."""
    if value is None:
        return ""
    if keyword == "ModalitiesInStudy":
        return [m for m in str(value).split("\\") if m]
    return value
