"""Built-in plugin: the ``send_study`` job (console and API "send to a node").

Payload: ``{"study_uid": ..., "node": NODE_NAME, "requested_by": LOGIN}``.
The files are sent as stored (see :mod:`pacscore.dicom.pynetdicom_ext.rawsend`) over one
association; any refused or failed instance fails the job, which is then
retried on the default schedule.  Sending again is harmless: the receiver
keeps or replaces duplicates.
"""

from __future__ import annotations

import logging

from pacscore import audit
from pacscore.dicom.pynetdicom_ext import rawsend
from pacscore.dicom.retrieve_scp import presentation_contexts
from pacscore.dicom.scu import client_ae
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.hookspecs import hookimpl
from pacscore.jobs import JobHandler
from pacscore.models import Instance, Node, Series, Study

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60


class SendFailed(Exception):
    pass


def _instances(study_uid: str) -> list[Instance]:
    study = Study.get_or_none(Study.study_uid == study_uid)
    if study is None:
        raise SendFailed(f"study {study_uid} is no longer in the archive")
    return list(Instance.select().join(Series).where(Series.study == study).order_by(Instance.id))


def send_study(pacs, payload: dict) -> None:
    node = Node.get_or_none(Node.name == payload["node"])
    if node is None:
        raise SendFailed(f"no node named {payload['node']!r}")
    instances = _instances(payload["study_uid"])
    ae = client_ae(pacs.config.aet, TIMEOUT_SECONDS)
    assoc = ae.associate(
        node.host, node.port, contexts=presentation_contexts(instances), ae_title=node.aet
    )
    if not assoc.is_established:
        raise SendFailed(f"association with {node.aet}@{node.host}:{node.port} failed")
    failures = []
    try:
        for instance in instances:
            failure = _send_one(pacs, assoc, instance)
            if failure:
                failures.append(failure)
    finally:
        assoc.release()
    if failures:
        raise SendFailed(f"{len(failures)} of {len(instances)} failed; first: {failures[0]}")
    audit.record(
        "send",
        actor=payload.get("requested_by", ""),
        target=payload["study_uid"],
        node=node.name,
        instances=len(instances),
    )
    log.info("sent study %s to %s (%d instances)", payload["study_uid"], node.name, len(instances))


def _send_one(pacs, assoc, instance: Instance) -> str:
    try:
        data, transfer_syntax = read_dicom_file(pacs.archive.path_of(instance))
    except (OSError, ValueError) as exc:
        return f"{instance.sop_uid}: unreadable ({exc})"
    dataset = rawsend.StoredFileDataset(
        data, transfer_syntax, instance.sop_class_uid, instance.sop_uid
    )
    try:
        status = assoc.send_c_store(dataset)
    except (ValueError, RuntimeError) as exc:
        return f"{instance.sop_uid}: {exc}"
    code = status.get("Status") if status else None
    if code is None:
        return f"{instance.sop_uid}: no answer"
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):
        return f"{instance.sop_uid}: status 0x{code:04X}"
    return ""


@hookimpl
def job_handlers(pacs):
    return {"send_study": JobHandler(send_study, concurrency=2)}
