"""Applying ORM^O01, OMI^O23 and ADT messages to the worklist and the archive.

The HL7 -> worklist field mapping is data (``DEFAULT_MAPPING``, editable in
the plugin settings): each worklist field reads from one or more locations
``SEG-F[.C[.S]]`` separated by ``|``, the first non-empty wins.  Locations
are looked up in the order group being applied (ORC, OBR, TQ1, ZDS, and for
OMI the IPC of the step), then in the message (PID, PV1, MRG...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pacscore import worklist as wl
from pacscore_hl7.message import Location, Message, Segment

DEFAULT_MAPPING: dict[str, str] = {
    # requested procedure
    "patient_id": "PID-3.1",
    "patient_name": "PID-5",
    "birth_date": "PID-7.1",
    "sex": "PID-8.1",
    "admission_id": "PV1-19.1",
    "placer_order": "ORC-2.1|OBR-2.1",
    "filler_order": "ORC-3.1|OBR-3.1",
    "accession_number": "IPC-1.1|OBR-18.1",
    "requested_procedure_id": "IPC-2.1|OBR-19.1",
    "study_uid": "IPC-3.1|ZDS-1.1",
    "procedure_code": "OBR-4.1",
    "procedure_description": "OBR-4.2",
    "procedure_scheme": "OBR-4.3",
    "referring_physician": "OBR-16",
    "reason": "OBR-31.2|OBR-13.1",
    # scheduled procedure step
    "sps_id": "IPC-4.1|OBR-20.1",
    "modality": "IPC-5.1|OBR-24.1",
    "station_aet": "IPC-9.1",
    "start": "TQ1-7.1|ORC-7.4|OBR-27.4|OBR-36.1",
    "description": "OBR-4.2",
    "performing_physician": "",
    "protocol_code": "IPC-6.1|OBR-4.1",
    "protocol_description": "IPC-6.2|OBR-4.2",
    "protocol_scheme": "IPC-6.3|OBR-4.3",
}
PROCEDURE_TARGETS = tuple(k for k in wl.PROCEDURE_FIELDS)
STEP_TARGETS = (
    "sps_id",
    "modality",
    "station_aet",
    "start",
    "description",
    "performing_physician",
    "protocol_code",
    "protocol_description",
    "protocol_scheme",
)
PERSON_NAMES = {"patient_name": "XPN", "referring_physician": "XCN"}
# ORC-5 order status -> step status
ORDER_STATUS = {
    "": wl.SCHEDULED,
    "SC": wl.SCHEDULED,
    "IP": wl.IN_PROGRESS,
    "CM": wl.COMPLETED,
    "CA": wl.CANCELED,
    "DC": wl.DISCONTINUED,
}
UPSERT_CONTROLS = {"NW", "XO", "SC"}
CANCEL_CONTROLS = {"CA", "OC"}
DISCONTINUE_CONTROLS = {"DC", "OD"}
MERGE_EVENTS = {"A40"}
UPDATE_EVENTS = {"A08", "A31"}
DICOM_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O"}
ORDER_SEGMENTS = {"ORC", "OBR", "TQ1", "TQ2", "ZDS", "IPC", "NTE", "ODS", "ODT", "OBX"}


class ContentError(ValueError):
    """The message is readable but its content cannot be applied (answered AE)."""


class Unsupported(ValueError):
    """A message type or event this feed does not process (answered AR)."""


def parse_mapping(mapping: dict[str, str]) -> dict[str, list[Location]]:
    """Validated locations for every target (defaults filled in); ValueError when wrong."""
    merged = {**DEFAULT_MAPPING, **mapping}
    unknown = set(merged) - set(DEFAULT_MAPPING)
    if unknown:
        raise ValueError(f"unknown mapping target(s): {', '.join(sorted(unknown))}")
    return {
        target: [Location.parse(p) for p in text.split("|") if p.strip()]
        for target, text in merged.items()
    }


@dataclass
class Scope:
    """The segments a location may name: the order group's first, then the message's."""

    message: Message
    segments: dict[str, Segment] = field(default_factory=dict)

    def read(self, locations: list[Location], target: str) -> str:
        for location in locations:
            segment = self.segments.get(location.segment)
            if target in PERSON_NAMES and location.component is None:
                value = _person_name(self.message, segment, location, PERSON_NAMES[target])
            else:
                value = self.message.read(segment, location)
            if value:
                return value
        return ""


def _person_name(message: Message, segment: Segment | None, location: Location, kind: str) -> str:
    """HL7 XPN (family^given^middle^suffix^prefix) or XCN (id^family^...) to a DICOM PN."""
    if segment is None:
        return ""
    parts = message.components(segment.raw(location.field))
    if kind == "XCN":
        parts = parts[1:]
    parts = (parts + [""] * 5)[:5]
    family, given, middle, suffix, prefix = (p.strip() for p in parts)
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def _sex(value: str) -> str:
    return DICOM_SEX.get(value.upper()[:1], "")


def _first_segments(message: Message, names: set[str] | None = None) -> dict[str, Segment]:
    found: dict[str, Segment] = {}
    for segment in message.segments:
        if (names is None or segment.name in names) and segment.name not in found:
            found[segment.name] = segment
    return found


def order_groups(message: Message) -> list[dict[str, list[Segment]]]:
    """Each ORC with the order segments after it (OBR, TQ1, IPC, ZDS...)."""
    groups: list[dict[str, list[Segment]]] = []
    for segment in message.segments:
        if segment.name == "ORC":
            groups.append({"ORC": [segment]})
        elif groups and segment.name in ORDER_SEGMENTS:
            groups[-1].setdefault(segment.name, []).append(segment)
    return groups


@dataclass
class Order:
    control: str
    status: str
    procedure: dict[str, str]
    steps: list[dict[str, str]]


def read_orders(message: Message, mapping: dict[str, list[Location]]) -> list[Order]:
    """The orders of an ORM/OMI message; ContentError for what cannot be applied."""
    base = _first_segments(message, {"MSH", "PID", "PV1", "PD1"})
    if "PID" not in base:
        raise ContentError("no PID segment")
    groups = order_groups(message)
    if not groups:
        raise ContentError("no ORC segment: nothing to order")
    orders = []
    for group in groups:
        segments = {**base, **{name: items[0] for name, items in group.items()}}
        scope = Scope(message, segments)
        control = message.read(segments["ORC"], Location("ORC", 1)).upper()
        status_code = message.read(segments["ORC"], Location("ORC", 5)).upper()
        procedure = {t: scope.read(mapping[t], t) for t in PROCEDURE_TARGETS}
        procedure["sex"] = _sex(procedure["sex"])
        procedure["birth_date"] = procedure["birth_date"][:8]
        if not procedure["patient_id"]:
            raise ContentError("PID-3 (patient ID) is empty")
        step_scopes = [
            Scope(message, {**segments, "IPC": ipc}) for ipc in group.get("IPC", [])
        ] or [scope]
        steps = [_step(s, mapping, procedure) for s in step_scopes]
        orders.append(Order(control, status_code, procedure, steps))
    return orders


def _step(scope: Scope, mapping: dict[str, list[Location]], procedure: dict) -> dict[str, str]:
    step = {t: scope.read(mapping[t], t) for t in STEP_TARGETS}
    start = step.pop("start")
    step["start_date"], step["start_time"] = start[:8], start[8:14]
    # a step needs a stable ID so that later messages update it instead of adding one
    step["sps_id"] = step["sps_id"] or procedure["requested_procedure_id"] or "1"
    return step


def _non_empty(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


def apply_order(pacs, order: Order) -> str:
    """Apply one order to the worklist; returns a short description of what was done."""
    worklist = pacs.worklist
    keys = order.procedure
    entry = worklist.find_entry(
        keys["placer_order"], keys["filler_order"], keys["accession_number"]
    )
    if order.control in UPSERT_CONTROLS:
        if order.status not in ORDER_STATUS:
            raise ContentError(f"unknown order status ORC-5 {order.status!r}")
        status = ORDER_STATUS[order.status]
        if entry is None:
            steps = [{**s, "status": status} for s in order.steps]
            created = worklist.create(_non_empty(keys), steps)
            return f"created entry {created['id']}"
        steps = [_non_empty(s) for s in order.steps]
        if order.status:  # an explicit status is the order filler's word
            steps = [{**s, "status": status} for s in steps]
        worklist.update(entry["id"], _non_empty(keys), steps)
        return f"updated entry {entry['id']}"
    if order.control in CANCEL_CONTROLS | DISCONTINUE_CONTROLS:
        if entry is None:
            number = keys["placer_order"] or keys["filler_order"] or keys["accession_number"]
            raise ContentError(f"unknown order {number!r}: nothing to cancel or discontinue")
        if order.control in CANCEL_CONTROLS:
            worklist.cancel(entry["id"])
            return f"canceled entry {entry['id']}"
        worklist.discontinue(entry["id"])
        return f"discontinued entry {entry['id']}"
    raise ContentError(f"unsupported order control ORC-1 {order.control!r}")


def apply_adt(pacs, message: Message, mapping: dict[str, list[Location]]) -> str:
    _, event = message.message_type
    if event not in UPDATE_EVENTS | MERGE_EVENTS:
        return f"ADT^{event} ignored"
    pids = [s for s in message.segments if s.name == "PID"]
    if not pids:
        raise ContentError("no PID segment")
    done = []
    for pid in pids:
        scope = Scope(message, {"PID": pid})
        patient_id = scope.read(mapping["patient_id"], "patient_id")
        if not patient_id:
            raise ContentError("PID-3 (patient ID) is empty")
        demographics = _non_empty(_demographics(scope, mapping))
        if event in UPDATE_EVENTS:
            change = pacs.patients.update(patient_id, demographics)
            done.append(f"patient {patient_id} updated ({_counts(change)})")
            continue
        prior_id = _prior_id(message, pid)
        if not prior_id:
            raise ContentError("MRG-1 (prior patient ID) is empty")
        change = pacs.patients.merge(prior_id, patient_id, demographics)
        done.append(f"patient {prior_id} merged into {patient_id} ({_counts(change)})")
    return "; ".join(done)


def _demographics(scope: Scope, mapping: dict[str, list[Location]]) -> dict[str, str]:
    values = {t: scope.read(mapping[t], t) for t in ("patient_name", "birth_date", "sex")}
    values["birth_date"] = values["birth_date"][:8]
    values["sex"] = _sex(values["sex"])
    return values


def _prior_id(message: Message, pid: Segment) -> str:
    """MRG-1 of the MRG that follows this PID."""
    after = message.segments[message.segments.index(pid) + 1 :]
    for segment in after:
        if segment.name == "PID":
            break
        if segment.name == "MRG":
            return message.read(segment, Location("MRG", 1, 1))
    return ""


def _counts(change: Any) -> str:
    return (
        f"{change.archive_patients} archive patient(s), {change.studies_moved} study(ies) moved, "
        f"{change.worklist_entries} worklist entry(ies)"
    )


def apply(pacs, message: Message, mapping: dict[str, list[Location]]) -> str:
    """Apply a message; ContentError (AE) or Unsupported (AR) when it cannot be."""
    code, event = message.message_type
    if code == "ADT":
        return apply_adt(pacs, message, mapping)
    if (code, event) in (("ORM", "O01"), ("OMI", "O23")) or (code in ("ORM", "OMI") and not event):
        return "; ".join(apply_order(pacs, order) for order in read_orders(message, mapping))
    raise Unsupported(f"unsupported message type {code}^{event}")
