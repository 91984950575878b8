"""Patient demographics updates and patient ID merges (``pacs.patients``).

Both act on the archive index (``Patient`` rows and the studies attached to
them) and on the worklist, in one transaction.  Stored files keep their
bytes: the index is what queries answer from, so after a change

- C-FIND (patient, study, series, image levels) and the worklist answer with
  the new demographics and, after a merge, the surviving patient ID;
- C-MOVE / C-GET send the files as they were received: their headers still
  carry the old name or the prior patient ID;
- a new instance of a merged study that still carries the prior ID is refused
  by the store policy ``refuse_patient_id_mismatch`` (when enabled), since the
  study now belongs to the surviving patient; a new study with the prior ID
  creates a new patient row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacscore.db import connection, write_transaction
from pacscore.dicomfile.text import normalize_text
from pacscore.models import Patient, Study
from pacscore.worklist import WorklistError

if TYPE_CHECKING:
    from pacscore.app import Pacs

DEMOGRAPHICS = ("patient_name", "birth_date", "sex")


@dataclass
class PatientChange:
    """What a change touched: archive patient rows, studies moved, worklist entries."""

    archive_patients: int = 0
    studies_moved: int = 0
    worklist_entries: int = 0


def _patient_columns(demographics: dict[str, str]) -> dict:
    unknown = set(demographics) - set(DEMOGRAPHICS)
    if unknown:
        raise WorklistError(f"unknown demographic field(s): {', '.join(sorted(unknown))}")
    columns = {k: (v or "").strip() for k, v in demographics.items()}
    if "birth_date" in columns:
        columns["birth_date"] = columns["birth_date"][:8]
    if "sex" in columns:
        columns["sex"] = columns["sex"][:16]
    if "patient_name" in columns:
        columns["name_key"] = normalize_text(columns["patient_name"])
    return columns


class Patients:
    def __init__(self, pacs: Pacs) -> None:
        self.pacs = pacs

    def update(self, patient_id: str, demographics: dict[str, str]) -> PatientChange:
        """Set name / birth date / sex of a patient in the archive index and the worklist.

        Only the keys given change; an unknown patient changes nothing (no error).
        """
        if not patient_id:
            raise WorklistError("a patient ID is needed")
        columns = _patient_columns(demographics)
        change = PatientChange()
        with connection(), write_transaction():
            if columns:
                change.archive_patients = (
                    Patient.update(**columns).where(Patient.patient_id == patient_id).execute()
                )
            change.worklist_entries = self.pacs.worklist.update_patient(patient_id, demographics)
        return change

    def merge(
        self, prior_id: str, surviving_id: str, demographics: dict[str, str] | None = None
    ) -> PatientChange:
        """Merge patient ``prior_id`` into ``surviving_id`` (HL7 ADT^A40).

        The studies of the prior patient move to the surviving one (created
        from the prior row when the archive does not know it yet), the prior
        patient row is deleted, and worklist entries change patient ID.
        ``demographics`` (optional) are applied to the surviving patient.
        """
        if not prior_id or not surviving_id:
            raise WorklistError("a merge needs the prior and the surviving patient IDs")
        if prior_id == surviving_id:
            raise WorklistError("the prior and surviving patient IDs are the same")
        columns = _patient_columns(demographics or {})
        change = PatientChange()
        with connection(), write_transaction():
            prior = Patient.get_or_none(Patient.patient_id == prior_id)
            surviving = Patient.get_or_none(Patient.patient_id == surviving_id)
            if prior is not None and surviving is None:
                Patient.update(patient_id=surviving_id).where(Patient.id == prior.id).execute()
                surviving, prior = prior, None
                change.archive_patients = 1
            if prior is not None:
                change.studies_moved = (
                    Study.update(patient=surviving.id).where(Study.patient == prior.id).execute()
                )
                Patient.delete().where(Patient.id == prior.id).execute()
                change.archive_patients = 2
            if surviving is not None and columns:
                Patient.update(**columns).where(Patient.id == surviving.id).execute()
            change.worklist_entries = self.pacs.worklist.move_patient(
                prior_id, surviving_id, demographics or {}
            )
        return change
