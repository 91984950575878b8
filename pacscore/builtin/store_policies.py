"""Built-in plugin: the store policies of the core settings, as a ``filter_store``."""

from __future__ import annotations

from pacscore import sql
from pacscore.dicomfile.text import normalize_text
from pacscore.hookspecs import hookimpl
from pacscore.models import Patient


@hookimpl
def filter_store(pacs, instance) -> str | None:
    settings = pacs.settings.core
    header = instance.header
    if not header.patient_id and not settings["accept_empty_patient_id"]:
        return "empty PatientID refused by store policy"
    if not header.patient_name and not settings["accept_empty_patient_name"]:
        return "empty PatientName refused by store policy"
    if settings["refuse_patient_id_mismatch"]:
        known = pacs.archive.study_patient_id(header.study_uid)
        if known is not None and known != header.patient_id:
            return f"PatientID {header.patient_id!r} differs from the study's {known!r}"
    if settings["refuse_patient_name_mismatch"]:
        return _patient_name_mismatch(header.patient_id, header.patient_name)
    return None


def _patient_name_mismatch(patient_id: str, patient_name: str) -> str | None:
    """The refusal when this PatientID is indexed with another PatientName, else None.

    One query on the unique index of ``patient.patient_id``.  An empty ID
    identifies nobody, and an empty name on either side is missing, not
    different (``accept_empty_patient_name`` decides on those).
    """
    if not patient_id or not any(name_groups(patient_name)):
        return None
    known = sql.select_value(Patient, "patient_name", "patient_id", patient_id)
    if not known or same_person_name(known, patient_name):
        return None
    # an Error Comment holds 64 characters: the indexed name last, where a cut hurts least
    return f"PatientID {patient_id} is indexed with another name: {known}"


def name_groups(name: str) -> list[str]:
    """The component groups of a person name (alphabetic, ideographic, phonetic), each
    without case, accents, spaces around components or empty trailing components."""
    groups = []
    for group in normalize_text(name).split("="):
        components = [c.strip() for c in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components))
    return groups


def same_person_name(first: str, second: str) -> bool:
    """Whether two PatientNames name the same person: ``Doé^John^^`` and ``DOE ^ JOHN``
    do; a group (ideographic, phonetic) present in one name only is not compared."""
    pairs = zip(name_groups(first), name_groups(second), strict=False)
    return all(a == b for a, b in pairs if a and b)
