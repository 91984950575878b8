"""pacscore-router: route studies to DICOM nodes by rules, as durable jobs.

Rules (name, enabled, priority, filters, actions) live in the plugin's
settings.  Actions: PUSH the received study (once stable) or each instance
(as received) to a node; AUTO FETCHING: on receiving a study, send the
patient's priors chosen by a prior syntax (``3 MG ; 2 US``); PRE FETCHING:
when a worklist entry is created, send the patient's priors to the node.
Every send is a ``router.send`` job; choosing and fetching priors is a
``router.priors`` job.  See README.md.
"""

from __future__ import annotations

import logging

from pydicom import dcmread

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.jobs import JobHandler
from pacscore.models import Instance, Series, Study
from pacscore_router import sending
from pacscore_router.matching import Subject, parse_tag
from pacscore_router.models import MODELS
from pacscore_router.rules import ordered, rule_matches
from pacscore_router.settings import (
    AUTO_FETCHING,
    PLUGIN_NAME,
    PRE_FETCHING,
    PUSH,
    RouterSettings,
)
from pacscore_router.worklist import worklist_subject

log = logging.getLogger(__name__)


@hookimpl
def database_models():
    return MODELS


@hookimpl
def settings_schema():
    return RouterSettings()


@hookimpl
def job_handlers(pacs):
    settings = pacs.plugin_settings(PLUGIN_NAME)
    schedule = settings["retry_schedule"]
    return {
        sending.SEND: JobHandler(
            sending.run_send, concurrency=settings["routing_threads"], retry_schedule=schedule
        ),
        sending.PRIORS: JobHandler(sending.run_priors, concurrency=1, retry_schedule=schedule),
    }


# -- events -----------------------------------------------------------------------------


def _file_subject(path: str, calling_ae: str, called_ae: str, modalities: set[str]) -> Subject:
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file matches on AEs only
        log.warning("router: cannot read %s for the rule filters: %s", path, exc)
        ds = None

    def value(keyword: str) -> str:
        return "" if ds is None else sending.element_text(ds, parse_tag(keyword))

    return Subject(value, calling_ae, called_ae, modalities)


def _from_remote_archive(pacs, settings: dict, calling_ae: str) -> bool:
    """Studies the router fetched from the remote archive are not routed again."""
    name = settings["remote_archive_node"]
    if not name or settings["route_studies_from_remote_archive"]:
        return False
    return any(node.name == name for node in pacs.nodes.by_aet(calling_ae))


def _rules_with(settings: dict, wanted) -> list[tuple[dict, list[dict]]]:
    """Enabled rules, in order, with their actions that ``wanted(action)`` selects."""
    selected = []
    for rule in ordered(settings["rules"]):
        actions = [a for a in rule["actions"] if wanted(a)]
        if rule["enabled"] and actions:
            selected.append((rule, actions))
    return selected


def _per_instance_push(action: dict) -> bool:
    return action["type"] == PUSH and action["per_instance"]


@hookimpl
def event_wanted(pacs, hook):
    """Stored instances matter only to per-instance push rules: without one, the core
    records no on_store event at all."""
    if hook != "on_store":
        return None
    return bool(_rules_with(pacs.plugin_settings(PLUGIN_NAME), _per_instance_push))


@hookimpl
def on_store(pacs, instance):
    settings = pacs.plugin_settings(PLUGIN_NAME)
    rules = _rules_with(settings, _per_instance_push)
    if not rules or _from_remote_archive(pacs, settings, instance.calling_ae):
        return
    subject = _file_subject(
        instance.path, instance.calling_ae, instance.called_ae, {instance.modality}
    )
    for rule, actions in rules:
        if rule_matches(rule, subject):
            for action in actions:
                sending.queue_send(
                    pacs, rule, action["node"], instance.study_uid, [instance.sop_uid]
                )


def _study_subject(pacs, study_uid: str) -> tuple[Subject, Study] | None:
    """What a study is matched on: its first instance, modalities and AE titles."""
    with connection():
        study = Study.get_or_none(Study.study_uid == study_uid)
        if study is None:
            return None
        first = (
            Instance.select().join(Series).where(Series.study == study.id).order_by(Instance.id)
        ).first()
    if first is None:
        return None
    modalities = {m for m in study.modalities.split("\\") if m}
    path = str(pacs.archive.path_of(first))
    return _file_subject(path, first.calling_ae, first.called_ae, modalities), study


def _study_action(action: dict) -> bool:
    """Actions fired when a study is stable: PUSH per study and AUTO FETCHING."""
    if action["type"] == PUSH:
        return not action["per_instance"]
    return action["type"] == AUTO_FETCHING


@hookimpl
def on_study_stable(pacs, study_uid, patient_id):
    settings = pacs.plugin_settings(PLUGIN_NAME)
    rules = _rules_with(settings, _study_action)
    if not rules:
        return
    found = _study_subject(pacs, study_uid)
    if found is None:
        return
    subject, study = found
    if _from_remote_archive(pacs, settings, subject.calling_ae):
        return
    for rule, actions in rules:
        if not rule_matches(rule, subject):
            continue
        for action in actions:
            if action["type"] == PUSH:
                sending.queue_study(pacs, rule, action["node"], study_uid)
            elif patient_id:  # without one, "the patient's studies" would be anybody's
                sending.queue_priors(pacs, rule, action, patient_id, study_uid, study.study_date)


@hookimpl
def on_worklist_change(pacs, before, after):
    if before is not None or not after:
        return  # PRE FETCHING acts when an entry is created
    rules = _rules_with(pacs.plugin_settings(PLUGIN_NAME), lambda a: a["type"] == PRE_FETCHING)
    if not rules:
        return
    entry = worklist_subject(after)
    if not entry.patient_id:
        log.warning("router: worklist entry without a patient ID: no prefetch")
        return
    for rule, actions in rules:
        if rule_matches(rule, entry.subject):
            for action in actions:
                sending.queue_priors(
                    pacs, rule, action, entry.patient_id, entry.study_uid, entry.date
                )


@hookimpl
def retention_holds(pacs, study_uids):
    with connection():
        return sending.held_studies(study_uids) or None


@hookimpl
def register_blueprints(pacs, app):
    from pacscore.web.menu import add_menu_item
    from pacscore_router.web import make_blueprints

    for blueprint in make_blueprints():
        app.register_blueprint(blueprint)
    add_menu_item(app, "Routing", "router.index", "configure")
