"""The worklist API (pacs.worklist), patient updates and merges (pacs.patients),
the overdue sweep, and the MWL C-FIND filter by station, in-process."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacscore.db import connection
from pacscore.dicom.scp import start_dicom_server
from pacscore.dicom.scu import client_ae
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.hookspecs import hookimpl
from pacscore.models import Node, OutboxEvent, Patient, Study
from pacscore.worklist import WorklistError
from tests.conftest import free_port
from tests.dicomgen import make_instance


class WorklistRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[dict | None, dict | None]] = []

    @hookimpl
    def on_worklist_change(self, before, after):
        self.events.append((before, after))


def statuses(state: dict | None) -> list[str] | None:
    return None if state is None else [s["status"] for s in state["steps"]]


PROCEDURE = {
    "patient_id": "P1",
    "patient_name": "Müller^Jürgen",
    "accession_number": "A1",
    "placer_order": "PL1",
}
STEP = {"sps_id": "S1", "modality": "CT", "start_date": "20240102", "start_time": "0900"}


@pytest.fixture
def recorded(make_pacs):
    recorder = WorklistRecorder()
    return make_pacs(recorder), recorder


def test_every_change_fires_the_hook_with_before_and_after(recorded):
    pacs, recorder = recorded
    entry = pacs.worklist.create(PROCEDURE, [STEP])
    # enqueued with the change, delivered by the dispatcher (here: drain)
    with connection():
        assert OutboxEvent.select().count() == 1
    pacs.worklist.update(entry["id"], {"reason": "pain"}, [{**STEP, "modality": "CT"}])
    pacs.worklist.update(entry["id"], {"reason": "pain"})  # no change: no event
    step_id = entry["steps"][0]["id"]
    pacs.worklist.set_step_status(step_id, "IN_PROGRESS")
    pacs.worklist.update(entry["id"], steps=[{"sps_id": "S2", "modality": "MR"}])
    pacs.worklist.cancel(entry["id"])
    pacs.worklist.delete(entry["id"])
    pacs.outbox.drain()

    transitions = [(statuses(b), statuses(a)) for b, a in recorder.events]
    assert transitions == [
        (None, ["SCHEDULED"]),
        (["SCHEDULED"], ["SCHEDULED"]),
        (["SCHEDULED"], ["IN_PROGRESS"]),
        (["IN_PROGRESS"], ["IN_PROGRESS", "SCHEDULED"]),
        (["IN_PROGRESS", "SCHEDULED"], ["CANCELED", "CANCELED"]),
        (["CANCELED", "CANCELED"], None),
    ]
    assert recorder.events[1][1]["reason"] == "pain"
    assert recorder.events[0][1]["study_uid"]  # generated


def test_refused_changes_fire_nothing(recorded):
    pacs, recorder = recorded
    entry = pacs.worklist.create({**PROCEDURE, "study_uid": "1.2.3"}, [STEP])
    with pytest.raises(WorklistError, match="already scheduled"):
        pacs.worklist.create({**PROCEDURE, "study_uid": "1.2.3"}, [STEP])
    with pytest.raises(WorklistError, match="patient ID"):
        pacs.worklist.create({"patient_name": "X"}, [STEP])
    with pytest.raises(WorklistError, match="status"):
        pacs.worklist.set_step_status(entry["steps"][0]["id"], "LOST")
    other = pacs.worklist.create({**PROCEDURE, "placer_order": "PL2"}, [STEP])
    with pytest.raises(WorklistError, match="already scheduled"):
        pacs.worklist.update(other["id"], {"study_uid": "1.2.3"})
    pacs.outbox.drain()
    assert len(recorder.events) == 2  # the two creations


def test_steps_not_started_in_time_are_discontinued(recorded):
    pacs, recorder = recorded
    long_ago = datetime.now() - timedelta(hours=30)
    soon = datetime.now() + timedelta(hours=1)
    old = pacs.worklist.create(
        {**PROCEDURE, "placer_order": "OLD"},
        [{**STEP, "start_date": f"{long_ago:%Y%m%d}", "start_time": f"{long_ago:%H%M%S}"}],
    )
    started = pacs.worklist.create(
        {**PROCEDURE, "placer_order": "STARTED"},
        [{**STEP, "start_date": f"{long_ago:%Y%m%d}", "start_time": f"{long_ago:%H%M%S}"}],
    )
    pacs.worklist.set_step_status(started["steps"][0]["id"], "IN_PROGRESS")
    future = pacs.worklist.create(
        {**PROCEDURE, "placer_order": "NEW"},
        [{**STEP, "start_date": f"{soon:%Y%m%d}", "start_time": f"{soon:%H%M%S}"}],
    )
    with connection():
        pacs.settings.update_core({"worklist_timeout_hours": 0})
    assert pacs.worklist.expire_overdue() == 0  # 0 disables the sweep
    with connection():
        pacs.settings.update_core({"worklist_timeout_hours": 24})
    assert pacs.worklist.expire_overdue() == 1
    assert statuses(pacs.worklist.get(old["id"])) == ["DISCONTINUED"]
    assert statuses(pacs.worklist.get(started["id"])) == ["IN_PROGRESS"]
    assert statuses(pacs.worklist.get(future["id"])) == ["SCHEDULED"]
    pacs.outbox.drain()
    assert (statuses(recorder.events[-1][0]), statuses(recorder.events[-1][1])) == (
        ["SCHEDULED"],
        ["DISCONTINUED"],
    )


def test_delete_reset_and_clear_finished(recorded):
    pacs, _ = recorded
    two_steps = pacs.worklist.create(PROCEDURE, [STEP, {**STEP, "sps_id": "S2"}])
    done = pacs.worklist.create({**PROCEDURE, "placer_order": "PL2"}, [STEP])
    first, second = (s["id"] for s in two_steps["steps"])
    pacs.worklist.set_step_status(first, "DISCONTINUED")
    assert statuses(pacs.worklist.reset_step(first)) == ["SCHEDULED", "SCHEDULED"]
    assert statuses(pacs.worklist.delete_step(second)) == ["SCHEDULED"]
    assert pacs.worklist.delete_step(first) is None  # its last step: the entry goes
    assert pacs.worklist.get(two_steps["id"]) is None
    pacs.worklist.complete(done["id"])
    active = pacs.worklist.create({**PROCEDURE, "placer_order": "PL3"}, [STEP])
    assert pacs.worklist.clear_finished() == 1
    assert pacs.worklist.get(done["id"]) is None
    assert pacs.worklist.get(active["id"]) is not None


def test_search_matches_like_dicom(recorded):
    pacs, _ = recorded
    pacs.worklist.create(PROCEDURE, [STEP])
    pacs.worklist.create(
        {"patient_id": "P2", "patient_name": "Martin^Paul", "placer_order": "PL2"},
        [{**STEP, "modality": "MR", "start_date": "20240301"}],
    )
    assert [e["patient_id"] for e in pacs.worklist.search(patient_name="mull*")] == ["P1"]
    assert [e["patient_id"] for e in pacs.worklist.search(modality="MR")] == ["P2"]
    found = pacs.worklist.search(start_date="20240201-20240331")
    assert [e["patient_id"] for e in found] == ["P2"]
    assert pacs.worklist.find_entry(placer_order="PL2")["patient_id"] == "P2"


def test_patient_update_and_merge_change_index_and_worklist(recorded, tmp_path):
    pacs, _ = recorded
    for patient_id in ("OLD", "NEW"):
        data, ts = read_dicom_file(
            make_instance(tmp_path / patient_id, patient_id=patient_id, patient_name="Doe^Jo")
        )
        with connection():
            assert pacs.archive.store(data, ts).ok
    pacs.worklist.create({**PROCEDURE, "patient_id": "OLD"}, [STEP])

    change = pacs.patients.update("OLD", {"patient_name": "Dupré^Jo", "sex": "F"})
    assert (change.archive_patients, change.worklist_entries) == (1, 1)
    with connection():
        old = Patient.get(Patient.patient_id == "OLD")
        assert (old.patient_name, old.name_key, old.sex) == ("Dupré^Jo", "DUPRE^JO", "F")

    change = pacs.patients.merge("OLD", "NEW")
    assert (change.studies_moved, change.worklist_entries) == (1, 1)
    with connection():
        assert not Patient.select().where(Patient.patient_id == "OLD").exists()
        new = Patient.get(Patient.patient_id == "NEW")
        assert Study.select().where(Study.patient == new.id).count() == 2
    assert pacs.worklist.search(patient_id="NEW")[0]["patient_id"] == "NEW"

    # a surviving ID the archive does not know yet: the prior patient is renamed
    change = pacs.patients.merge("NEW", "NEWEST", {"patient_name": "Doe^Joan"})
    with connection():
        newest = Patient.get(Patient.patient_id == "NEWEST")
        assert newest.patient_name == "Doe^Joan"
        assert Study.select().where(Study.patient == newest.id).count() == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_station_may_see_only_its_own_steps(recorded):
    pacs, _ = recorded
    pacs.worklist.create(PROCEDURE, [{**STEP, "station_aet": "CT1"}])
    pacs.worklist.create({**PROCEDURE, "placer_order": "PL2"}, [{**STEP, "station_aet": "CT2"}])
    with connection():
        Node.create(name="ct1", aet="CT1", host="127.0.0.1", port=1, allow_worklist=True)
        Node.create(
            name="ct2",
            aet="CT2",
            host="127.0.0.1",
            port=1,
            allow_worklist=True,
            worklist_own_steps_only=True,
        )
    port = free_port()
    server = start_dicom_server(pacs, "127.0.0.1", port)
    try:
        assert sorted(_stations(port, "CT1")) == ["CT1", "CT2"]
        assert _stations(port, "CT2") == ["CT2"]
    finally:
        server.shutdown()


def _stations(port: int, aet: str) -> list[str]:
    ae = client_ae(aet, timeout=30)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    assert assoc.is_established
    query = Dataset()
    query.PatientName = ""
    item = Dataset()
    item.ScheduledStationAETitle = ""
    query.ScheduledProcedureStepSequence = [item]
    found = []
    for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
        if status and status.Status == 0xFF00:
            found.append(identifier.ScheduledProcedureStepSequence[0].ScheduledStationAETitle)
    assoc.release()
    return found


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worklist_list_command(pacs_home):
    assert pacs_home.cli("worklist", "list").stdout.strip() == "no worklist entry"
    refused = pacs_home.cli("worklist", "list", "--status", "BOGUS", check=False)
    assert refused.returncode == 1
    assert "unknown status 'BOGUS'" in refused.stderr
    assert pacs_home.cli("worklist", "list", "--status", "canceled").stdout.strip() == (
        "no CANCELED step"
    )
