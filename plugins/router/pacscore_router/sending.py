"""Sends as durable jobs, and the priors they carry.

``router.send`` delivers the queued instances of one study to one node for
one rule; ``router.priors`` chooses a patient's priors (local archive, and the
remote archive when configured: C-FIND, then C-MOVE to us), then queues their
sends.  Deliveries are recorded per instance in ``RouterDelivery``: queuing
what a rule already sent (or is about to send) to a node does nothing unless
forced, and a retried job sends only what is still queued.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.multival import MultiValue

from pacscore.db import connection, utcnow, write_transaction
from pacscore.dicom.scu import (
    ScuError,
    StoredFile,
    find_series,
    find_studies,
    move_study,
    store_files,
)
from pacscore.jobs import RUNNING, Postpone
from pacscore.models import Instance, Job, Node, Patient, Series, Study
from pacscore_router.matching import keyword_of, parse_tag, seconds_until_window
from pacscore_router.models import RouterDelivery
from pacscore_router.priors import Candidate, choose_priors, parse_priors
from pacscore_router.settings import PLUGIN_NAME

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

SEND, PRIORS = "router.send", "router.priors"
QUEUED, SENT, MISSING = "queued", "sent", "missing"
OPEN_JOB_STATES = ("pending", RUNNING, "failed")
CHUNK = 500
# index columns that answer a prior condition without reading a file
SERIES_COLUMNS = {"BodyPartExamined": "body_part", "SeriesDescription": "description"}
STUDY_COLUMNS = {"StudyDescription": "description", "AccessionNumber": "accession_number"}


def _chunks(values: list, size: int = CHUNK):
    for start in range(0, len(values), size):
        yield values[start : start + size]


def find_rule(pacs: Pacs, name: str) -> dict | None:
    for rule in pacs.plugin_settings(PLUGIN_NAME)["rules"]:
        if rule["name"] == name:
            return rule
    return None


def window_wait(rule: dict | None, now: datetime | None = None) -> float:
    window = rule["filters"].get("time_window") if rule else None
    return seconds_until_window(window, now or datetime.now())


# -- queuing --------------------------------------------------------------------------


def queue_send(
    pacs: Pacs, rule: dict, node: str, study_uid: str, sop_uids: list[str], force: bool = False
) -> int | None:
    """Queue a ``router.send`` of these instances unless they are sent or already queued.

    Returns the new job's id, or ``None`` when there was nothing new to send.
    Outside the rule's time window the job is due when the window opens.
    """
    name = rule["name"]
    with connection(), write_transaction():
        existing: dict[str, RouterDelivery] = {}
        for chunk in _chunks(sop_uids):
            for row in RouterDelivery.select().where(
                (RouterDelivery.rule == name)
                & (RouterDelivery.node == node)
                & RouterDelivery.sop_uid.in_(chunk)
            ):
                existing[row.sop_uid] = row
        job_ids = list({row.job_id for row in existing.values() if row.state == QUEUED})
        open_jobs = {
            job.id
            for chunk in _chunks(job_ids)
            for job in Job.select(Job.id).where(Job.id.in_(chunk) & Job.state.in_(OPEN_JOB_STATES))
        }
        todo = [
            uid
            for uid in sop_uids
            if force
            or uid not in existing
            or (existing[uid].state == QUEUED and existing[uid].job_id not in open_jobs)
        ]
        if not todo:
            return None
        job_id = pacs.jobs.enqueue(
            SEND, {"rule": name, "node": node, "study_uid": study_uid}, delay=window_wait(rule)
        )
        now = utcnow()
        for chunk in _chunks(todo):
            RouterDelivery.insert_many(
                [
                    {
                        "rule": name,
                        "node": node,
                        "sop_uid": uid,
                        "study_uid": study_uid,
                        "state": QUEUED,
                        "job_id": job_id,
                        "updated": now,
                    }
                    for uid in chunk
                ]
            ).on_conflict(
                conflict_target=[RouterDelivery.rule, RouterDelivery.node, RouterDelivery.sop_uid],
                update={
                    RouterDelivery.state: QUEUED,
                    RouterDelivery.job_id: job_id,
                    RouterDelivery.study_uid: study_uid,
                    RouterDelivery.updated: now,
                },
            ).execute()
    log.info("router: rule %s queued %d instance(s) of %s to %s", name, len(todo), study_uid, node)
    return job_id


def study_instances(study_uid: str) -> list[str]:
    return [
        row[0]
        for row in Instance.select(Instance.sop_uid)
        .join(Series)
        .join(Study)
        .where(Study.study_uid == study_uid)
        .order_by(Instance.id)
        .tuples()
    ]


def queue_study(pacs: Pacs, rule: dict, node: str, study_uid: str, force: bool = False):
    with connection():
        sop_uids = study_instances(study_uid)
    return queue_send(pacs, rule, node, study_uid, sop_uids, force=force) if sop_uids else None


def queue_priors(pacs: Pacs, rule: dict, action: dict, patient_id: str, study_uid: str, date: str):
    """Queue the choice (and fetch) of a patient's priors for a fetching action."""
    payload = {
        "rule": rule["name"],
        "node": action["node"],
        "priors": action["priors"],
        "patient_id": patient_id,
        "study_uid": study_uid,
        "study_date": date,
    }
    return pacs.jobs.enqueue(PRIORS, payload)


# -- running a send ---------------------------------------------------------------------


def _node(name: str) -> Node:
    node = Node.get_or_none(Node.name == name)
    if node is None:
        raise LookupError(f"no node named {name!r}")
    if not node.enabled:
        raise RuntimeError(f"node {name} is disabled")
    return node


def run_send(pacs: Pacs, payload: dict[str, Any]) -> None:
    """Job ``router.send``: deliver the queued instances of a study to a node."""
    rule_name, node_name, study_uid = payload["rule"], payload["node"], payload["study_uid"]
    rule = find_rule(pacs, rule_name)
    wait = window_wait(rule)
    if wait:
        raise Postpone(wait, f"outside the time window of rule {rule_name}")
    node = _node(node_name)
    # only this job's rows: concurrent jobs of one study never send the same instance
    wanted = (
        (RouterDelivery.rule == rule_name)
        & (RouterDelivery.node == node_name)
        & (RouterDelivery.study_uid == study_uid)
        & (RouterDelivery.state == QUEUED)
    )
    job = pacs.jobs.current()
    job_id = job.id if job is not None else None
    if job_id is not None:
        wanted &= RouterDelivery.job_id == job_id
    rows = list(RouterDelivery.select().where(wanted))
    if not rows:
        return
    instances = {
        instance.sop_uid: instance
        for chunk in _chunks([row.sop_uid for row in rows])
        for instance in Instance.select().where(Instance.sop_uid.in_(chunk))
    }
    gone = [row.sop_uid for row in rows if row.sop_uid not in instances]
    if gone:
        log.warning(
            "router: %d instance(s) of %s left the archive before sending", len(gone), study_uid
        )
        _mark(rule_name, node_name, gone, MISSING, job_id)
    files = [
        StoredFile(pacs.archive.path_of(i), i.sop_class_uid, i.sop_uid, i.transfer_syntax)
        for i in instances.values()
    ]
    report = store_files(node, pacs.config.aet, files)
    _mark(rule_name, node_name, report.sent, SENT, job_id)
    if report.failed:
        first = next(iter(report.failed.items()))
        raise ScuError(
            f"{len(report.failed)} of {len(files)} instance(s) of study {study_uid} not "
            f"delivered to {node_name}: {first[1]} ({first[0]})"
        )


def _mark(rule: str, node: str, sop_uids: list[str], state: str, job_id: int | None) -> None:
    """Record the outcome; rows re-queued meanwhile for another job (a forced resend) stay."""
    now = utcnow()
    for chunk in _chunks(sop_uids):
        condition = (
            (RouterDelivery.rule == rule)
            & (RouterDelivery.node == node)
            & RouterDelivery.sop_uid.in_(chunk)
        )
        if job_id is not None:
            condition &= RouterDelivery.job_id == job_id
        RouterDelivery.update(state=state, updated=now).where(condition).execute()


# -- priors -------------------------------------------------------------------------------


def _file_values(path, keywords: set[str]) -> dict[str, str]:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[parse_tag(k) for k in keywords])
    except Exception as exc:  # noqa: BLE001 - an unreadable file matches nothing
        log.warning("router: cannot read %s: %s", path, exc)
        return {}
    return _dataset_values(ds, keywords)


def local_candidates(pacs: Pacs, patient_id: str, keywords: set[str]) -> list[Candidate]:
    """The patient's studies in the archive, with the condition values of each series."""
    candidates = []
    studies = Study.select().join(Patient).where(Patient.patient_id == patient_id)
    for study in studies:
        series_list = []
        for series in Series.select().where(Series.study == study.id):
            values = {}
            for keyword in keywords:
                if keyword in SERIES_COLUMNS:
                    values[keyword] = getattr(series, SERIES_COLUMNS[keyword])
                elif keyword in STUDY_COLUMNS:
                    values[keyword] = getattr(study, STUDY_COLUMNS[keyword])
            unread = keywords - values.keys()
            if unread:
                first = Instance.select().where(Instance.series == series.id).first()
                if first is not None:
                    values.update(_file_values(pacs.archive.path_of(first), unread))
            series_list.append((series.modality, values))
        candidates.append(
            Candidate(study.study_uid, study.study_date, study.study_time, series_list)
        )
    return candidates


def element_text(ds, tag: int | None) -> str:
    """The text of an element (values joined by backslashes), "" when absent."""
    element = ds.get(tag) if tag is not None else None
    if element is None or element.value is None:
        return ""
    if isinstance(element.value, MultiValue | list):
        return "\\".join(str(v) for v in element.value)
    return str(element.value)


def _dataset_values(ds, keywords: set[str]) -> dict[str, str]:
    return {keyword: element_text(ds, parse_tag(keyword)) for keyword in keywords}


def remote_candidates(
    pacs: Pacs, remote: Node, patient_id: str, keywords: set[str]
) -> list[Candidate]:
    """The patient's studies on the remote archive (C-FIND; series level for conditions)."""
    aet = pacs.config.aet
    candidates = []
    for study in find_studies(remote, aet, patient_id):
        uid = str(study.get("StudyInstanceUID", ""))
        if not uid:
            continue
        if keywords:
            found = find_series(remote, aet, uid, **{k: "" for k in keywords})
            series_list = [
                (str(s.get("Modality", "")), _dataset_values(s, keywords)) for s in found
            ]
        else:
            modalities = study.get("ModalitiesInStudy", "")
            if isinstance(modalities, str):
                modalities = [m for m in modalities.split("\\") if m]
            series_list = [(str(m), {}) for m in modalities]
        candidates.append(
            Candidate(
                uid,
                str(study.get("StudyDate", "")),
                str(study.get("StudyTime", "")),
                series_list,
                local=False,
            )
        )
    return candidates


def run_priors(pacs: Pacs, payload: dict[str, Any]) -> None:
    """Job ``router.priors``: choose the priors, fetch the remote ones, queue their sends."""
    items = parse_priors(payload["priors"])
    keywords = {keyword_of(c.keyword) for item in items for c in item.conditions}
    # conditions were validated as known tags; the keyword is what C-FIND and dcmread use
    candidates = {c.study_uid: c for c in local_candidates(pacs, payload["patient_id"], keywords)}
    settings = pacs.plugin_settings(PLUGIN_NAME)
    remote = _node(settings["remote_archive_node"]) if settings["remote_archive_node"] else None
    if remote is not None:
        for candidate in remote_candidates(pacs, remote, payload["patient_id"], keywords):
            candidates.setdefault(candidate.study_uid, candidate)
    chosen = choose_priors(
        _with_keywords(items),
        list(candidates.values()),
        payload["study_uid"],
        payload["study_date"],
    )
    rule = find_rule(pacs, payload["rule"]) or {"name": payload["rule"], "filters": {}}
    for candidate in chosen:
        if not candidate.local:
            result = move_study(remote, pacs.config.aet, candidate.study_uid, pacs.config.aet)
            log.info(
                "router: fetched prior %s from %s (%d instance(s))",
                candidate.study_uid,
                remote.name,
                result.completed,
            )
        queue_study(pacs, rule, payload["node"], candidate.study_uid)
    log.info(
        "router: rule %s chose %d prior(s) of patient %s for %s",
        payload["rule"],
        len(chosen),
        payload["patient_id"],
        payload["node"],
    )


def _with_keywords(items):
    """Items whose conditions name attributes by keyword (as the candidates do)."""
    return [
        replace(
            item,
            conditions=tuple(replace(c, keyword=keyword_of(c.keyword)) for c in item.conditions),
        )
        for item in items
    ]


# -- retention ------------------------------------------------------------------------


def held_studies(study_uids: list[str]) -> dict[str, str]:
    """Studies with instances still to deliver by a pending, running or failed send."""
    holds: dict[str, str] = {}
    for chunk in _chunks(list(study_uids)):
        rows = (
            RouterDelivery.select(RouterDelivery.study_uid, RouterDelivery.node, Job.id, Job.state)
            .join(Job, on=(Job.id == RouterDelivery.job_id))
            .where(
                RouterDelivery.study_uid.in_(chunk)
                & (RouterDelivery.state == QUEUED)
                & Job.state.in_(OPEN_JOB_STATES)
            )
            .tuples()
        )
        for study_uid, node, job_id, state in rows:
            holds.setdefault(study_uid, f"router: send to {node} is {state} (job {job_id})")
    return holds
