"""Modality Performed Procedure Step SCP (N-CREATE, N-SET).

N-CREATE (status ``IN PROGRESS``) sets the referenced scheduled steps
IN_PROGRESS; N-SET with ``COMPLETED`` or ``DISCONTINUED`` finishes them.
Each change goes through ``pacs.worklist`` and so fires
``on_worklist_change``.  The steps are found from the Scheduled Step
Attributes Sequence: Study Instance UID and Scheduled Procedure Step ID
(or, without an SPS ID, the Accession Number).  An item naming neither is
an unscheduled procedure step, accepted without a worklist change.

Errors (PS3.4 F.7.2, PS3.7 C): a reference to an unknown step ->
``0x0106`` Invalid attribute value; an N-CREATE for an MPPS that exists ->
``0x0111`` Duplicate SOP Instance; an N-SET for an unknown MPPS -> ``0x0112``
No such SOP Instance; an N-SET after COMPLETED/DISCONTINUED -> ``0x0110``
Processing failure (Error ID ``0xA710``, may no longer be updated).
"""

from __future__ import annotations

import json
import logging

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacscore import worklist
from pacscore.db import connection, utcnow, write_transaction
from pacscore.models import PerformedStep, RequestedProcedure, ScheduledStep

log = logging.getLogger(__name__)

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MAY_NO_LONGER_BE_UPDATED = 0xA710

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STEP_STATUS = {
    IN_PROGRESS: worklist.IN_PROGRESS,
    COMPLETED: worklist.COMPLETED,
    DISCONTINUED: worklist.DISCONTINUED,
}


class MppsError(Exception):
    def __init__(self, status: int, comment: str, error_id: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.error_id = error_id

    def dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = str(self)[:64]
        if self.error_id is not None:
            ds.ErrorID = self.error_id
        return ds


def _text(item: Dataset, keyword: str) -> str:
    return str(item.get(keyword) or "").strip()


def referenced_steps(attributes: Dataset) -> list[int]:
    """The ids of the scheduled steps an MPPS names; MppsError for an unknown one."""
    step_ids = []
    for item in attributes.get("ScheduledStepAttributesSequence", None) or []:
        study_uid = _text(item, "StudyInstanceUID")
        sps_id = _text(item, "ScheduledProcedureStepID")
        accession = _text(item, "AccessionNumber")
        if not sps_id and not accession:
            continue  # unscheduled
        select = ScheduledStep.select(ScheduledStep.id).join(RequestedProcedure)
        if study_uid:
            select = select.where(RequestedProcedure.study_uid == study_uid)
        if sps_id:
            select = select.where(ScheduledStep.sps_id == sps_id)
        else:
            select = select.where(RequestedProcedure.accession_number == accession)
        found = [row.id for row in select]
        if not found:
            raise MppsError(
                INVALID_ATTRIBUTE_VALUE,
                f"unknown scheduled step {sps_id or accession} in study {study_uid or '?'}",
            )
        step_ids.extend(i for i in found if i not in step_ids)
    return step_ids


def _status(attributes: Dataset) -> str:
    return _text(attributes, "PerformedProcedureStepStatus").upper()


def create(pacs, mpps_uid: str, attributes: Dataset, calling_ae: str) -> None:
    if _status(attributes) != IN_PROGRESS:
        raise MppsError(INVALID_ATTRIBUTE_VALUE, "N-CREATE needs status IN PROGRESS")
    with connection():
        if PerformedStep.select().where(PerformedStep.mpps_uid == mpps_uid).exists():
            raise MppsError(DUPLICATE_SOP_INSTANCE, f"MPPS {mpps_uid} already exists")
        step_ids = referenced_steps(attributes)
        with write_transaction():
            PerformedStep.create(
                mpps_uid=mpps_uid,
                step_ids=json.dumps(step_ids),
                status=IN_PROGRESS,
                calling_ae=calling_ae[:16],
            )
            for step_id in step_ids:
                pacs.worklist.set_step_status(step_id, worklist.IN_PROGRESS)
    pacs.outbox.wake()
    log.info("MPPS %s from %s IN PROGRESS (steps %s)", mpps_uid, calling_ae, step_ids or "-")


def update(pacs, mpps_uid: str, modifications: Dataset) -> None:
    new_status = _status(modifications)
    if new_status and new_status not in STEP_STATUS:
        raise MppsError(INVALID_ATTRIBUTE_VALUE, f"invalid status {new_status!r}")
    with connection(), write_transaction():
        performed = PerformedStep.get_or_none(PerformedStep.mpps_uid == mpps_uid)
        if performed is None:
            raise MppsError(NO_SUCH_SOP_INSTANCE, f"no MPPS {mpps_uid}")
        if performed.status != IN_PROGRESS:
            raise MppsError(
                PROCESSING_FAILURE,
                f"MPPS is {performed.status}: may no longer be updated",
                MAY_NO_LONGER_BE_UPDATED,
            )
        if not new_status or new_status == IN_PROGRESS:
            return
        PerformedStep.update(status=new_status, updated=utcnow()).where(
            PerformedStep.id == performed.id
        ).execute()
        for step_id in json.loads(performed.step_ids):
            if ScheduledStep.select().where(ScheduledStep.id == step_id).exists():
                pacs.worklist.set_step_status(step_id, STEP_STATUS[new_status])
    pacs.outbox.wake()
    log.info("MPPS %s %s", mpps_uid, new_status)


def _decode(dataset_getter) -> Dataset:
    try:
        return dataset_getter()
    except Exception as exc:  # noqa: BLE001 - malformed attribute lists raise anything
        raise MppsError(PROCESSING_FAILURE, f"cannot decode attribute list: {exc}") from exc


def handle_n_create(event, pacs):
    calling_ae = event.assoc.requestor.ae_title
    mpps_uid = event.request.AffectedSOPInstanceUID
    reply = Dataset()
    if not mpps_uid:
        mpps_uid = generate_uid()
        reply.AffectedSOPInstanceUID = mpps_uid
    try:
        create(pacs, str(mpps_uid), _decode(lambda: event.attribute_list), calling_ae)
    except (MppsError, worklist.WorklistError) as exc:
        error = exc if isinstance(exc, MppsError) else MppsError(PROCESSING_FAILURE, str(exc))
        log.warning("MPPS N-CREATE from %s refused: %s", calling_ae, error)
        return error.dataset(), None
    return SUCCESS, reply


def handle_n_set(event, pacs):
    mpps_uid = str(event.request.RequestedSOPInstanceUID or "")
    try:
        update(pacs, mpps_uid, _decode(lambda: event.modification_list))
    except (MppsError, worklist.WorklistError) as exc:
        error = exc if isinstance(exc, MppsError) else MppsError(PROCESSING_FAILURE, str(exc))
        log.warning("MPPS N-SET %s refused: %s", mpps_uid, error)
        return error.dataset(), None
    return SUCCESS, Dataset()
