"""Built-in plugin: the store policies of the core settings, as a ``filter_store``."""

from __future__ import annotations

from pacscore.hookspecs import hookimpl


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
    return None
