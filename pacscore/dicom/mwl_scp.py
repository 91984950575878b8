"""Modality Worklist C-FIND SCP: scheduled procedure steps matched in SQL.

One response per matching step: the requested procedure's attributes and a
Scheduled Procedure Step Sequence with that step.  The response carries the
keys the modality asked for; an empty sequence key (no item) is answered
with a full item.  A query that leaves the step status universal sees the
SCHEDULED and IN_PROGRESS (DICOM ``STARTED``) steps only.  A node with
``worklist_own_steps_only`` sees only steps whose Scheduled Station AE Title
is its own.  Access (the node's ``worklist`` right) is checked before this
handler runs (see :mod:`pacscore.dicom.pynetdicom_ext.access`).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacscore import query, worklist
from pacscore.db import connection
from pacscore.dicom.store_scp import status_dataset
from pacscore.dicomfile import status
from pacscore.models import ScheduledStep

log = logging.getLogger(__name__)

# requested procedure attributes: keyword -> RequestedProcedure field
PROCEDURE_KEYS = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "birth_date",
    "PatientSex": "sex",
    "AccessionNumber": "accession_number",
    "AdmissionID": "admission_id",
    "StudyInstanceUID": "study_uid",
    "RequestedProcedureID": "requested_procedure_id",
    "RequestedProcedureDescription": "procedure_description",
    "ReferringPhysicianName": "referring_physician",
    "ReasonForTheRequestedProcedure": "reason",
    "PlacerOrderNumberImagingServiceRequest": "placer_order",
    "FillerOrderNumberImagingServiceRequest": "filler_order",
}
# scheduled procedure step attributes (in the SPS sequence item): keyword -> field
STEP_KEYS = {
    "Modality": "modality",
    "ScheduledStationAETitle": "station_aet",
    "ScheduledProcedureStepStartDate": "start_date",
    "ScheduledProcedureStepStartTime": "start_time",
    "ScheduledProcedureStepDescription": "description",
    "ScheduledPerformingPhysicianName": "performing_physician",
    "ScheduledProcedureStepID": "sps_id",
    "ScheduledProcedureStepStatus": "status",
}
# code sequences: keyword -> (code, scheme, meaning) fields
CODE_KEYS = {
    "RequestedProcedureCodeSequence": (
        "procedure_code",
        "procedure_scheme",
        "procedure_description",
    ),
    "ScheduledProtocolCodeSequence": ("protocol_code", "protocol_scheme", "protocol_description"),
}
MATCHED_PROCEDURE_KEYS = (
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
)
MATCHED_STEP_KEYS = tuple(STEP_KEYS)
SPS_SEQUENCE = "ScheduledProcedureStepSequence"
# a full item when the modality sends an empty sequence key
FULL_STEP_ITEM = (*STEP_KEYS, "ScheduledProtocolCodeSequence")


class BadIdentifier(ValueError):
    pass


def _sps_item(identifier: Dataset) -> Dataset | None:
    sequence = identifier.get(SPS_SEQUENCE)
    return sequence[0] if sequence else None


def filters_for(identifier: Dataset) -> dict[str, Any]:
    """The matching keys of an MWL identifier as :func:`worklist.match_conditions` filters."""
    try:
        filters = {
            PROCEDURE_KEYS[k]: identifier[k].value
            for k in MATCHED_PROCEDURE_KEYS
            if k in identifier
        }
        item = _sps_item(identifier)
        if item is not None:
            for keyword in MATCHED_STEP_KEYS:
                if keyword in item:
                    filters[STEP_KEYS[keyword]] = item[keyword].value
    except Exception as exc:  # noqa: BLE001 - malformed identifiers raise anything
        raise BadIdentifier(f"cannot decode identifier: {exc}") from exc
    status_value = filters.get("status")
    if status_value is None or query.is_universal(status_value):
        filters["status"] = list(worklist.ACTIVE)
    return filters


def _value(field: str, row: Any) -> Any:
    value = getattr(row, field)
    if field == "status":
        return worklist.DICOM_STATUS.get(value, value)
    return value


def _code_item(fields: tuple[str, str, str], row: Any) -> Sequence:
    code, scheme, meaning = (getattr(row, f) for f in fields)
    if not code:
        return Sequence([])
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = scheme or "L"
    item.CodeMeaning = meaning
    return Sequence([item])


def _fill(target: Dataset, keyword: str, tag, vr: str, row: Any, fields: dict) -> None:
    if keyword in fields:
        target.add_new(tag, vr, _value(fields[keyword], row))
    elif keyword in CODE_KEYS and _has_fields(row, CODE_KEYS[keyword]):
        target.add_new(tag, "SQ", _code_item(CODE_KEYS[keyword], row))
    elif vr == "SQ":
        target.add_new(tag, "SQ", Sequence([]))
    else:
        target.add_new(tag, vr, None)


def _has_fields(row: Any, fields: tuple[str, ...]) -> bool:
    return all(hasattr(row, f) for f in fields)


def _step_item(requested: Dataset | None, step: ScheduledStep) -> Dataset:
    item = Dataset()
    if not requested:  # no item or an empty one: universal, every attribute
        for keyword in FULL_STEP_ITEM:
            template = Dataset()
            setattr(template, keyword, None)
            elem = template[keyword]
            _fill(item, keyword, elem.tag, elem.VR, step, STEP_KEYS)
        return item
    for elem in requested:
        if elem.keyword and elem.keyword != "SpecificCharacterSet":
            _fill(item, elem.keyword, elem.tag, elem.VR, step, STEP_KEYS)
    return item


def response_for(identifier: Dataset, step: ScheduledStep, procedure: Any) -> Dataset:
    rsp = Dataset()
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword == "SpecificCharacterSet":
            continue
        if keyword == SPS_SEQUENCE:
            rsp.add_new(elem.tag, "SQ", Sequence([_step_item(_sps_item(identifier), step)]))
        else:
            _fill(rsp, keyword, elem.tag, elem.VR, procedure, PROCEDURE_KEYS)
    charset = character_set(rsp)
    if charset:
        rsp.SpecificCharacterSet = charset
    return rsp


def _texts(dataset: Dataset):
    for elem in dataset:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _texts(item)
        elif isinstance(elem.value, str):
            yield elem.value
        elif elem.VR == "PN" and elem.value is not None:
            yield str(elem.value)


def character_set(dataset: Dataset) -> str | None:
    """None for ASCII, ``ISO_IR 100`` when Latin-1 covers every value, else UTF-8.

    Latin-1 first: it is what European modalities read, and many do not
    support ``ISO_IR 192``.
    """
    texts = [t for t in _texts(dataset) if not t.isascii()]
    if not texts:
        return None
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 100"


def _own_steps_only(pacs, aet: str) -> list:
    if any(node.worklist_own_steps_only for node in pacs.nodes.by_aet(aet)):
        return [ScheduledStep.station_aet == aet.strip()]
    return []


def handle_worklist_find(event, pacs):
    aet = event.assoc.requestor.ae_title
    try:
        identifier = event.identifier
        filters = filters_for(identifier)
    except (BadIdentifier, worklist.WorklistError) as exc:
        log.warning("worklist C-FIND from %s refused: %s", aet, exc)
        yield status_dataset(status.IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    limit = pacs.settings.core["max_find_results"]
    try:
        with connection():
            extra = _own_steps_only(pacs, aet)
            rows = list(worklist.matching_steps(filters, limit + 1, extra))
    except (worklist.WorklistError, query.QueryError) as exc:
        yield status_dataset(status.UNABLE_TO_PROCESS, str(exc)), None
        return
    for step, procedure in rows[:limit]:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        yield status.PENDING, response_for(identifier, step, procedure)
    if len(rows) > limit:
        log.warning("worklist C-FIND result cut at %d matches", limit)
        yield status_dataset(status.TOO_MANY_MATCHES, f"too many matches: cut at {limit}"), None
