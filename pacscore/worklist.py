"""The Modality Worklist: requested procedures and their scheduled steps.

This is the public API plugins (the HL7 feed), the DICOM services (MWL
C-FIND, MPPS) and the console use.  Every create, update, status change and
deletion enqueues ``on_worklist_change(before, after)`` in the transaction
that makes the change, so the event is delivered at least once.

An entry is a plain dict (:func:`to_dict`): the requested procedure's fields
plus ``steps``, a list of step dicts.  Entries are addressed by their ``id``;
:meth:`Worklist.find_entry` looks one up by order number or accession.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from peewee import Node
from pydicom.uid import generate_uid

from pacscore import query
from pacscore.db import connection, utcnow, write_transaction
from pacscore.dicomfile.text import normalize_text
from pacscore.models import RequestedProcedure, ScheduledStep

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
MISSED = "MISSED"
CANCELED = "CANCELED"
STATUSES = (SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, MISSED, CANCELED)
FINISHED = (COMPLETED, DISCONTINUED, MISSED, CANCELED)
# what a modality sees when its query leaves the status universal
ACTIVE = (SCHEDULED, IN_PROGRESS)
# DICOM's defined term for a started step (0040,0020); the others are spelled alike
DICOM_STATUS = {IN_PROGRESS: "STARTED"}
STATUS_FROM_DICOM = {"STARTED": IN_PROGRESS, "IN PROGRESS": IN_PROGRESS}

# generated Study Instance UIDs (entries created without one)
UID_ROOT = "1.2.826.0.1.3680043.10.1523.2."

PROCEDURE_FIELDS = (
    "patient_id",
    "patient_name",
    "birth_date",
    "sex",
    "accession_number",
    "admission_id",
    "study_uid",
    "requested_procedure_id",
    "procedure_code",
    "procedure_scheme",
    "procedure_description",
    "referring_physician",
    "reason",
    "placer_order",
    "filler_order",
)
STEP_FIELDS = (
    "sps_id",
    "modality",
    "station_aet",
    "start_date",
    "start_time",
    "description",
    "performing_physician",
    "protocol_code",
    "protocol_scheme",
    "protocol_description",
    "status",
)


class WorklistError(ValueError):
    """A worklist request that cannot be applied (unknown entry, bad value)."""


class UnknownEntry(WorklistError):
    pass


class StepInProgress(WorklistError):
    """A change to an entry a modality is performing (a step IN_PROGRESS), not confirmed."""


# -- plain-dict state --------------------------------------------------------------


def step_dict(step: ScheduledStep) -> dict[str, Any]:
    state = {name: getattr(step, name) for name in STEP_FIELDS}
    state["id"] = step.id
    state["updated"] = step.updated.isoformat()
    return state


def to_dict(procedure: RequestedProcedure) -> dict[str, Any]:
    """The state of an entry as JSON-ready data (what ``on_worklist_change`` carries)."""
    state = {name: getattr(procedure, name) for name in PROCEDURE_FIELDS}
    state["id"] = procedure.id
    state["created"] = procedure.created.isoformat()
    state["updated"] = procedure.updated.isoformat()
    steps = ScheduledStep.select().where(ScheduledStep.procedure == procedure.id)
    state["steps"] = [step_dict(s) for s in steps.order_by(ScheduledStep.id)]
    return state


# -- value checks -------------------------------------------------------------------


def _clean(values: dict[str, Any], allowed: Iterable[str]) -> dict[str, str]:
    allowed = set(allowed)
    unknown = set(values) - allowed
    if unknown:
        raise WorklistError(f"unknown field(s): {', '.join(sorted(unknown))}")
    return {k: "" if v is None else str(v).strip() for k, v in values.items()}


def _check_status(status: str) -> str:
    status = STATUS_FROM_DICOM.get(status, status)
    if status not in STATUSES:
        raise WorklistError(f"unknown step status {status!r}; one of {', '.join(STATUSES)}")
    return status


def scheduled_at(start_date: str, start_time: str) -> datetime | None:
    """The UTC moment of a local DICOM date and time, None when the date is unusable."""
    digits = (start_date + start_time.replace(":", "").split(".")[0].ljust(6, "0"))[:14]
    try:
        local = datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return local.astimezone(UTC).replace(tzinfo=None)


def _procedure_columns(values: dict[str, str]) -> dict[str, str]:
    columns = dict(values)
    if "patient_name" in values:
        columns["name_key"] = normalize_text(values["patient_name"])
    if "referring_physician" in values:
        columns["referring_key"] = normalize_text(values["referring_physician"])
    return columns


def _step_columns(values: dict[str, str], current: ScheduledStep | None) -> dict[str, Any]:
    columns: dict[str, Any] = dict(values)
    if "status" in values:
        columns["status"] = _check_status(values["status"] or SCHEDULED)
    if "start_date" in values or "start_time" in values:
        date = values.get("start_date", current.start_date if current else "")
        time = values.get("start_time", current.start_time if current else "")
        columns["scheduled_at"] = scheduled_at(date, time) or utcnow()
    columns["updated"] = utcnow()
    return columns


# -- matching (MWL C-FIND, console search, CLI) -------------------------------------


def match_conditions(filters: dict[str, Any]) -> list[Node]:
    """SQL conditions over RequestedProcedure joined with ScheduledStep.

    ``filters`` uses DICOM matching (wildcards, date/time ranges, lists) on
    ``patient_name`` (case and accent insensitive), ``patient_id``,
    ``accession_number``, ``study_uid``, ``requested_procedure_id``,
    ``sps_id``, ``modality``, ``station_aet``, ``start_date``, ``start_time``,
    ``status`` (a name or a list of names).
    """
    conditions = []
    text_columns = {
        "patient_id": RequestedProcedure.patient_id,
        "accession_number": RequestedProcedure.accession_number,
        "study_uid": RequestedProcedure.study_uid,
        "requested_procedure_id": RequestedProcedure.requested_procedure_id,
        "sps_id": ScheduledStep.sps_id,
        "modality": ScheduledStep.modality,
        "station_aet": ScheduledStep.station_aet,
    }
    for key, value in filters.items():
        if value is None or query.is_universal(value):
            continue
        values = [v for v in query._values(value) if v]
        if key in text_columns:
            conditions.append(_any(query.match_text(text_columns[key], v) for v in values))
        elif key == "patient_name":
            conditions.append(_any(_match_name(v) for v in values))
        elif key == "start_date":
            conditions.append(query.match_range(ScheduledStep.start_date, values[0], 8, "0", "9"))
        elif key == "start_time":
            conditions.append(query.match_range(ScheduledStep.start_time, values[0], 6, "0", "9"))
        elif key == "status":
            conditions.append(ScheduledStep.status.in_([_check_status(v.upper()) for v in values]))
        else:
            raise WorklistError(f"cannot match on {key!r}")
    return conditions


def _match_name(value: str) -> Node:
    key = normalize_text(value)
    column = RequestedProcedure.name_key
    return query.like(column, key) if query.has_wildcards(key) else column == key


def _any(conditions: Iterable[Node]) -> Node:
    result = None
    for condition in conditions:
        result = condition if result is None else (result | condition)
    return result


def matching_steps(filters: dict[str, Any], limit: int, extra: Iterable[Node] = ()):
    """(step, procedure) pairs matching ``filters`` and ``extra`` conditions, by start."""
    select = (
        ScheduledStep.select(ScheduledStep, RequestedProcedure)
        .join(RequestedProcedure)
        .order_by(ScheduledStep.start_date, ScheduledStep.start_time, ScheduledStep.id)
    )
    for condition in [*match_conditions(filters), *extra]:
        select = select.where(condition)
    for step in select.limit(limit):
        yield step, step.procedure


# -- the API --------------------------------------------------------------------------


class Worklist:
    """``pacs.worklist``: create, change and query worklist entries."""

    def __init__(self, pacs: Pacs) -> None:
        self.pacs = pacs

    def _changed(self, before: dict | None, after: dict | None) -> None:
        """Record the change event; call inside the transaction that made it."""
        self.pacs.outbox.enqueue("on_worklist_change", before=before, after=after)

    def _load(self, entry_id: int) -> RequestedProcedure:
        procedure = RequestedProcedure.get_or_none(RequestedProcedure.id == entry_id)
        if procedure is None:
            raise UnknownEntry(f"no worklist entry {entry_id}")
        return procedure

    # -- reading --------------------------------------------------------------------

    def get(self, entry_id: int) -> dict[str, Any] | None:
        with connection():
            procedure = RequestedProcedure.get_or_none(RequestedProcedure.id == entry_id)
            return to_dict(procedure) if procedure else None

    def find_entry(
        self, placer_order: str = "", filler_order: str = "", accession_number: str = ""
    ) -> dict[str, Any] | None:
        """The entry with this placer order, else filler order, else accession number."""
        pairs = [
            (column, value)
            for column, value in (
                (RequestedProcedure.placer_order, placer_order),
                (RequestedProcedure.filler_order, filler_order),
                (RequestedProcedure.accession_number, accession_number),
            )
            if value
        ]
        if not pairs:
            return None
        # one query for the three keys (an HL7 feed asks this for every order)
        with connection():
            candidates = list(
                RequestedProcedure.select(RequestedProcedure.id, *(c for c, _ in pairs))
                .where(_any(column == value for column, value in pairs))
                .limit(50)
            )
            for column, value in pairs:
                for row in candidates:
                    if getattr(row, column.name) == value:
                        return to_dict(self._load(row.id))
        return None

    def search(self, limit: int = 1000, **filters: Any) -> list[dict[str, Any]]:
        """Entries having a step that matches ``filters`` (see :func:`match_conditions`)."""
        with connection():
            ids: list[int] = []
            for _step, procedure in matching_steps(filters, limit * 10):
                if procedure.id not in ids:
                    ids.append(procedure.id)
                if len(ids) >= limit:
                    break
            rows = {
                r.id: r for r in RequestedProcedure.select().where(RequestedProcedure.id << ids)
            }
            return [to_dict(rows[i]) for i in ids]

    # -- changing -------------------------------------------------------------------

    def create(self, procedure: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
        """Create an entry with its steps; a missing Study Instance UID is generated.

        Raises :class:`WorklistError` for an unknown field or status, a missing
        patient ID, no step, or a Study Instance UID already used.
        """
        values = _clean(procedure, PROCEDURE_FIELDS)
        if not values.get("patient_id"):
            raise WorklistError("a worklist entry needs a patient ID")
        if not steps:
            raise WorklistError("a worklist entry needs at least one scheduled step")
        clean_steps = [_clean(s, STEP_FIELDS) for s in steps]
        given_uid = values.get("study_uid")
        values["study_uid"] = given_uid or generate_uid(prefix=UID_ROOT)
        with connection(), write_transaction():
            if given_uid and _uid_taken(given_uid):
                raise WorklistError(f"Study Instance UID {values['study_uid']} already scheduled")
            now = utcnow()
            entry_id = RequestedProcedure.insert(
                **_procedure_columns(values), created=now, updated=now
            ).execute()
            after = {
                **{name: values.get(name, "") for name in PROCEDURE_FIELDS},
                "id": entry_id,
                "created": now.isoformat(),
                "updated": now.isoformat(),
                "steps": [],
            }
            for index, step in enumerate(clean_steps, start=1):
                # a step needs an ID to be addressed by later updates and by MPPS
                step["sps_id"] = step.get("sps_id") or str(index)
                columns = _step_columns({"status": SCHEDULED, **step}, None)
                columns.setdefault("scheduled_at", now)
                step_id = ScheduledStep.insert(procedure=entry_id, **columns).execute()
                state = {name: columns.get(name, "") for name in STEP_FIELDS}
                after["steps"].append(
                    {**state, "id": step_id, "updated": columns["updated"].isoformat()}
                )
            self._changed(None, after)
        self.pacs.outbox.wake()
        return after

    def update(
        self,
        entry_id: int,
        procedure: dict[str, Any] | None = None,
        steps: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Change an entry's fields and upsert its steps (matched by ``sps_id``).

        A step whose ``sps_id`` is not in the entry yet is added; steps not
        named are left as they are.  No event fires when nothing changed.
        """
        values = _clean(procedure or {}, PROCEDURE_FIELDS)
        clean_steps = [_clean(s, STEP_FIELDS) for s in steps or []]
        if "patient_id" in values and not values["patient_id"]:
            raise WorklistError("a worklist entry needs a patient ID")
        with connection(), write_transaction():
            row = self._load(entry_id)
            before = to_dict(row)
            new_uid = values.get("study_uid")
            if new_uid and new_uid != row.study_uid and _uid_taken(new_uid):
                raise WorklistError(f"Study Instance UID {new_uid} already scheduled")
            if values:
                changes = _procedure_columns(values)
                RequestedProcedure.update(**changes, updated=utcnow()).where(
                    RequestedProcedure.id == entry_id
                ).execute()
            for step in clean_steps:
                self._upsert_step(row, step)
            after = to_dict(self._load(entry_id))
            if _differs(before, after):
                self._changed(before, after)
        self.pacs.outbox.wake()
        return after

    def edit(
        self,
        entry_id: int,
        procedure: dict[str, Any] | None = None,
        steps: dict[int, dict[str, Any]] | None = None,
        confirm_in_progress: bool = False,
    ) -> dict[str, Any]:
        """Change an entry's fields and those of its steps, addressed by step id.

        One transaction, one ``on_worklist_change`` (none when nothing
        changed).  Raises :class:`UnknownEntry`, :class:`StepInProgress` when a
        step of the entry is IN_PROGRESS and ``confirm_in_progress`` is false
        (a modality is performing it: the change may not reach it), and
        :class:`WorklistError` for an unknown field, an empty patient ID or a
        step of another entry.
        """
        values = _clean(procedure or {}, PROCEDURE_FIELDS)
        changes = {
            step_id: _clean(fields, STEP_FIELDS) for step_id, fields in (steps or {}).items()
        }
        if "patient_id" in values and not values["patient_id"]:
            raise WorklistError("a worklist entry needs a patient ID")
        with connection(), write_transaction():
            row = self._load(entry_id)
            before = to_dict(row)
            mine = {step["id"]: step for step in before["steps"]}
            foreign = sorted(set(changes) - set(mine))
            if foreign:
                raise WorklistError(f"no step {foreign[0]} in worklist entry {entry_id}")
            busy = [s["sps_id"] for s in before["steps"] if s["status"] == IN_PROGRESS]
            if busy and not confirm_in_progress:
                raise StepInProgress(
                    f"step {', '.join(busy)} is IN_PROGRESS: a modality is performing it"
                )
            new_uid = values.get("study_uid")
            if new_uid and new_uid != row.study_uid and _uid_taken(new_uid):
                raise WorklistError(f"Study Instance UID {new_uid} already scheduled")
            changed_values = {k: v for k, v in values.items() if before[k] != v}
            if changed_values:
                RequestedProcedure.update(
                    **_procedure_columns(changed_values), updated=utcnow()
                ).where(RequestedProcedure.id == entry_id).execute()
            for step_id, fields in changes.items():
                changed = {k: v for k, v in fields.items() if mine[step_id][k] != v}
                if changed:
                    current = ScheduledStep.get_by_id(step_id)
                    ScheduledStep.update(**_step_columns(changed, current)).where(
                        ScheduledStep.id == step_id
                    ).execute()
            after = to_dict(self._load(entry_id))
            if _differs(before, after):
                self._changed(before, after)
        self.pacs.outbox.wake()
        return after

    def _upsert_step(self, row: RequestedProcedure, step: dict[str, str]) -> None:
        existing = ScheduledStep.get_or_none(
            (ScheduledStep.procedure == row.id) & (ScheduledStep.sps_id == step.get("sps_id", ""))
        )
        if existing is None:
            columns = _step_columns({"status": SCHEDULED, **step}, None)
            columns.setdefault("scheduled_at", utcnow())
            ScheduledStep.create(procedure=row, **columns)
            return
        changed = {k: v for k, v in step.items() if getattr(existing, k) != v}
        if changed:
            ScheduledStep.update(**_step_columns(changed, existing)).where(
                ScheduledStep.id == existing.id
            ).execute()

    def set_step_status(self, step_id: int, status: str) -> dict[str, Any]:
        """Set one step's status; returns the entry's new state."""
        status = _check_status(status)
        with connection(), write_transaction():
            step = ScheduledStep.get_or_none(ScheduledStep.id == step_id)
            if step is None:
                raise UnknownEntry(f"no scheduled step {step_id}")
            before = to_dict(step.procedure)
            if step.status != status:
                ScheduledStep.update(status=status, updated=utcnow()).where(
                    ScheduledStep.id == step_id
                ).execute()
            after = to_dict(self._load(step.procedure_id))
            if _differs(before, after):
                self._changed(before, after)
        self.pacs.outbox.wake()
        return after

    def set_entry_status(
        self, entry_id: int, status: str, keep: Iterable[str] = (COMPLETED,)
    ) -> dict[str, Any]:
        """Set the status of every step of an entry, except steps already in ``keep``."""
        status = _check_status(status)
        with connection(), write_transaction():
            before = to_dict(self._load(entry_id))
            ScheduledStep.update(status=status, updated=utcnow()).where(
                (ScheduledStep.procedure == entry_id)
                & (ScheduledStep.status != status)
                & ScheduledStep.status.not_in(list(keep))
            ).execute()
            after = to_dict(self._load(entry_id))
            if _differs(before, after):
                self._changed(before, after)
        self.pacs.outbox.wake()
        return after

    def cancel(self, entry_id: int) -> dict[str, Any]:
        """CANCELED: the order was withdrawn (completed steps stay completed)."""
        return self.set_entry_status(entry_id, CANCELED)

    def discontinue(self, entry_id: int) -> dict[str, Any]:
        """DISCONTINUED: the order was stopped (completed steps stay completed)."""
        return self.set_entry_status(entry_id, DISCONTINUED)

    def complete(self, entry_id: int) -> dict[str, Any]:
        return self.set_entry_status(entry_id, COMPLETED, keep=())

    def reset_step(self, step_id: int) -> dict[str, Any]:
        """Put a step back to SCHEDULED (for instance after a DISCONTINUED by mistake)."""
        return self.set_step_status(step_id, SCHEDULED)

    def delete(self, entry_id: int) -> None:
        with connection(), write_transaction():
            before = to_dict(self._load(entry_id))
            RequestedProcedure.delete().where(RequestedProcedure.id == entry_id).execute()
            self._changed(before, None)
        self.pacs.outbox.wake()

    def delete_step(self, step_id: int) -> dict[str, Any] | None:
        """Delete one step; the entry goes too when it was its last step (returns None)."""
        with connection(), write_transaction():
            step = ScheduledStep.get_or_none(ScheduledStep.id == step_id)
            if step is None:
                raise UnknownEntry(f"no scheduled step {step_id}")
            entry_id = step.procedure_id
            before = to_dict(self._load(entry_id))
            step.delete_instance()
            if not ScheduledStep.select().where(ScheduledStep.procedure == entry_id).exists():
                RequestedProcedure.delete().where(RequestedProcedure.id == entry_id).execute()
                after = None
            else:
                after = to_dict(self._load(entry_id))
            self._changed(before, after)
        self.pacs.outbox.wake()
        return after

    def clear_finished(self) -> int:
        """Delete every entry whose steps are all finished; return how many."""
        with connection(), write_transaction():
            active = ScheduledStep.select(ScheduledStep.procedure).where(
                ScheduledStep.status.not_in(list(FINISHED))
            )
            rows = list(RequestedProcedure.select().where(RequestedProcedure.id.not_in(active)))
            for row in rows:
                self._changed(to_dict(row), None)
            if rows:
                RequestedProcedure.delete().where(
                    RequestedProcedure.id << [r.id for r in rows]
                ).execute()
        self.pacs.outbox.wake()
        return len(rows)

    def expire_overdue(self, now: datetime | None = None) -> int:
        """DISCONTINUE steps still SCHEDULED ``worklist_timeout_hours`` after their start.

        A timeout of 0 disables the sweep.  Returns the number of steps changed.
        """
        hours = self.pacs.settings.core["worklist_timeout_hours"]
        if not hours:
            return 0
        limit = (now or utcnow()) - timedelta(hours=hours)
        with connection():
            overdue = list(
                ScheduledStep.select(ScheduledStep.id)
                .where((ScheduledStep.status == SCHEDULED) & (ScheduledStep.scheduled_at < limit))
                .limit(1000)
                .tuples()
            )
            for (step_id,) in overdue:
                self.set_step_status(step_id, DISCONTINUED)
        if overdue:
            log.info("worklist: %d step(s) not started in time set DISCONTINUED", len(overdue))
        return len(overdue)

    # -- patients -------------------------------------------------------------------

    def update_patient(self, patient_id: str, demographics: dict[str, str]) -> int:
        """Change name / birth date / sex on the entries of a patient; return how many.

        Call inside a transaction to combine with other changes (see
        :mod:`pacscore.patients`).
        """
        values = _clean(demographics, ("patient_name", "birth_date", "sex"))
        count = 0
        with connection(), write_transaction():
            rows = RequestedProcedure.select().where(RequestedProcedure.patient_id == patient_id)
            for row in list(rows):
                before = to_dict(row)
                RequestedProcedure.update(**_procedure_columns(values), updated=utcnow()).where(
                    RequestedProcedure.id == row.id
                ).execute()
                after = to_dict(self._load(row.id))
                if _differs(before, after):
                    self._changed(before, after)
                    count += 1
        self.pacs.outbox.wake()
        return count

    def move_patient(self, prior_id: str, surviving_id: str, demographics: dict[str, str]) -> int:
        """Give the entries of ``prior_id`` to ``surviving_id`` (a patient merge)."""
        values = _clean({**demographics, "patient_id": surviving_id}, PROCEDURE_FIELDS)
        count = 0
        with connection(), write_transaction():
            rows = RequestedProcedure.select().where(RequestedProcedure.patient_id == prior_id)
            for row in list(rows):
                before = to_dict(row)
                RequestedProcedure.update(**_procedure_columns(values), updated=utcnow()).where(
                    RequestedProcedure.id == row.id
                ).execute()
                self._changed(before, to_dict(self._load(row.id)))
                count += 1
        self.pacs.outbox.wake()
        return count


def _uid_taken(study_uid: str) -> bool:
    return RequestedProcedure.select().where(RequestedProcedure.study_uid == study_uid).exists()


def _differs(before: dict, after: dict) -> bool:
    """True when something other than the ``updated`` stamps changed."""

    def strip(state: dict) -> dict:
        steps = [{k: v for k, v in s.items() if k != "updated"} for s in state["steps"]]
        return {**{k: v for k, v in state.items() if k != "updated"}, "steps": steps}

    return strip(before) != strip(after)
