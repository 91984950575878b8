"""Read a worklist entry (the ``after`` dict of ``on_worklist_change``).

The hook passes the requested procedure with its scheduled procedure steps
as plain dicts.  Keys are looked up by DICOM keyword (``PatientID``) or in
snake case (``patient_id``), at the top level or in the first scheduled
step (a list of dicts under any key), so that filters and the prior
reference date work whichever spelling the worklist uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pacscore_router.matching import Subject

DATE_KEYS = ("ScheduledProcedureStepStartDate", "scheduled_date", "start_date", "StudyDate")
MODALITY_KEYS = ("Modality", "modality")
STATION_KEYS = ("ScheduledStationAETitle", "scheduled_station_aet", "station_aet")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def flatten(entry: dict[str, Any]) -> dict[str, Any]:
    """Top-level values, then those of the first dict of each list (the first step)."""
    flat: dict[str, Any] = {}
    for name, value in entry.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for inner, inner_value in value[0].items():
                flat.setdefault(_key(inner), inner_value)
        elif isinstance(value, dict):
            for inner, inner_value in value.items():
                flat.setdefault(_key(inner), inner_value)
        else:
            flat[_key(name)] = value
    return flat


@dataclass
class WorklistEntry:
    subject: Subject
    patient_id: str
    study_uid: str
    date: str


def worklist_subject(entry: dict[str, Any]) -> WorklistEntry:
    flat = flatten(entry)

    def value(keyword: str) -> str:
        found = flat.get(_key(keyword))
        return "" if found is None else str(found)

    def first(keys) -> str:
        return next((value(k) for k in keys if value(k)), "")

    date = re.sub(r"\D", "", first(DATE_KEYS))[:8]
    modality = first(MODALITY_KEYS)
    subject = Subject(
        value,
        calling_ae="",
        called_ae=first(STATION_KEYS),
        modalities={modality} if modality else set(),
    )
    patient_id = value("PatientID") or value("patient_id")
    study_uid = value("StudyInstanceUID") or value("study_uid")
    return WorklistEntry(subject, patient_id, study_uid, date)
