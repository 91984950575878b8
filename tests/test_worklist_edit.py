"""Editing a worklist entry: PATCH /api/v1/worklist/<id> and the console's entry page.

Every field POST takes, for the entry and its steps; on_worklist_change with before and
after; audited; a step IN_PROGRESS asks for ?confirm=yes (409) as a deletion does; a
real ``pacscore serve`` answers DCMTK ``findscu -W`` with the edited values."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import AuditEvent, Node, StudyType
from tests.conftest import run_dcmtk
from tests.webclient import PASSWORD, Console, add_user, web_app


class WorklistRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[dict | None, dict | None]] = []

    @hookimpl
    def on_worklist_change(self, before, after):
        self.events.append((before, after))


@pytest.fixture
def recorder():
    return WorklistRecorder()


@pytest.fixture
def pacs(make_pacs, recorder):
    pacs = make_pacs(recorder)
    with connection():
        Node.create(name="ct1", aet="CT1", host="127.0.0.1", port=104)
        Node.create(name="ct2", aet="CT2", host="127.0.0.1", port=106)
        Node.create(name="mr1", aet="MR1", host="127.0.0.1", port=105)
        StudyType.create(code="CTTHOR", description="CT thorax", modality="CT",
                         nodes=json.dumps(["ct1", "ct2"]))  # fmt: skip
        StudyType.create(code="MRHEAD", description="MR head", modality="MR",
                         nodes=json.dumps(["mr1"]))  # fmt: skip
    return pacs


@pytest.fixture
def clerk(pacs):
    add_user("clerk", "secretary")
    console = Console(web_app(pacs))
    assert console.login("clerk").status_code == 302
    return console


def events(pacs, recorder):
    pacs.outbox.drain()
    return recorder.events


ORDER = {"patient_id": "P42", "patient_name": "MARTIN^LEA", "birth_date": "1980-02-03",
         "sex": "F", "accession_number": "ACC42", "study_type": "CTTHOR", "node": "ct1",
         "start_date": "2026-01-15", "start_time": "09:30", "reason": "cough"}  # fmt: skip


def two_step_entry(pacs, status: str = "SCHEDULED") -> dict:
    return pacs.worklist.create(
        {"patient_id": "P7", "patient_name": "DOE^JANE", "accession_number": "ACC7"},
        [{"sps_id": "1", "modality": "CT", "start_date": "20260110", "status": status},
         {"sps_id": "2", "modality": "MR", "start_date": "20260111"}],
    )  # fmt: skip


def test_api_patch_changes_only_the_given_fields(pacs, clerk, recorder):
    entry = clerk.api("POST", "/api/v1/worklist", json=ORDER).json
    url = f"/api/v1/worklist/{entry['id']}"
    response = clerk.api("PATCH", url, json={
        "patient_name": "MARTIN^LÉA", "birth_date": "19800204", "reason": "fever",
        "start_date": "2026-02-01", "start_time": "14:00", "node": "ct2",
    })  # fmt: skip
    assert response.status_code == 200, response.json
    changed = response.json
    assert (changed["patient_name"], changed["birth_date"], changed["reason"]) == (
        "MARTIN^LÉA", "19800204", "fever")  # fmt: skip
    assert (changed["patient_id"], changed["sex"], changed["accession_number"]) == (
        "P42", "F", "ACC42")  # fmt: skip
    [step] = changed["steps"]
    assert (step["start_date"], step["start_time"], step["station_aet"], step["modality"]) == (
        "20260201", "140000", "CT2", "CT")  # fmt: skip
    assert clerk.api("GET", url).json == changed
    # the name is searchable as the new one (its key was rebuilt)
    assert [e["id"] for e in pacs.worklist.search(patient_name="martin^lea")] == [entry["id"]]
    created, (before, after) = events(pacs, recorder)
    assert created[0] is None
    assert before["patient_name"] == "MARTIN^LEA" and after["patient_name"] == "MARTIN^LÉA"
    assert before["steps"][0]["station_aet"] == "CT1" and after["steps"][0]["station_aet"] == "CT2"
    with connection():
        [audit] = AuditEvent.select().where(AuditEvent.action == "worklist_update")
    assert (audit.actor, audit.target) == ("clerk", str(entry["id"]))
    assert "node" in json.loads(audit.details)["fields"]


def test_api_patch_study_type_and_any_station(pacs, clerk, recorder):
    entry = clerk.api("POST", "/api/v1/worklist", json=ORDER).json
    url = f"/api/v1/worklist/{entry['id']}"
    # as POST: the type names the procedure and its step; its one node becomes the station
    changed = clerk.api("PATCH", url, json={"study_type": "MRHEAD"}).json
    assert (changed["procedure_code"], changed["procedure_description"]) == ("MRHEAD", "MR head")
    [step] = changed["steps"]
    assert (step["modality"], step["description"], step["protocol_code"], step["station_aet"]) == (
        "MR", "MR head", "MRHEAD", "MR1")  # fmt: skip
    refused = clerk.api("PATCH", url, json={"node": "ct1"})
    assert refused.json["errors"] == {"node": ["not a node allowed for this study type"]}
    assert clerk.api("PATCH", url, json={"node": ""}).json["steps"][0]["station_aet"] == ""
    # nothing changed: no event
    count = len(events(pacs, recorder))
    assert clerk.api("PATCH", url, json={"reason": "cough"}).status_code == 200
    assert len(events(pacs, recorder)) == count


def test_api_patch_refuses_bad_input_and_keeps_everything(pacs, clerk, recorder):
    entry = clerk.api("POST", "/api/v1/worklist", json=ORDER).json
    url = f"/api/v1/worklist/{entry['id']}"
    response = clerk.api("PATCH", url, json={"sex": "X", "colour": "red", "patient_id": "",
                                             "start_time": "25:00"})  # fmt: skip
    assert response.status_code == 400
    assert set(response.json["errors"]) == {"sex", "colour", "patient_id", "start_time"}
    assert clerk.api("PATCH", url, json={"study_type": "NOPE"}).json["errors"] == {
        "study_type": ["no such study type"]}  # fmt: skip
    assert clerk.api("PATCH", url, json={"node": "nowhere"}).json["errors"] == {
        "node": ["no such node"]}  # fmt: skip
    assert clerk.api("PATCH", url, data="[]", content_type="application/json").status_code == 400
    assert clerk.api("PATCH", "/api/v1/worklist/999999", json={"reason": "x"}).status_code == 404
    assert clerk.api("GET", url).json == entry
    assert len(events(pacs, recorder)) == 1  # the creation only


def test_api_patch_of_an_in_progress_entry_needs_confirmation(pacs, clerk, recorder):
    entry = two_step_entry(pacs, status="IN_PROGRESS")
    url = f"/api/v1/worklist/{entry['id']}"
    response = clerk.api("PATCH", url, json={"accession_number": "ACC8"})
    assert response.status_code == 409 and "confirm=yes" in response.json["message"]
    assert pacs.worklist.get(entry["id"])["accession_number"] == "ACC7"
    response = clerk.api("PATCH", f"{url}?confirm=yes", json={"accession_number": "ACC8"})
    assert response.status_code == 200 and response.json["accession_number"] == "ACC8"
    assert events(pacs, recorder)[-1][1]["accession_number"] == "ACC8"


def test_api_patch_steps_by_id(pacs, clerk):
    entry = two_step_entry(pacs)
    other = two_step_entry(pacs)
    first, second = (s["id"] for s in entry["steps"])
    url = f"/api/v1/worklist/{entry['id']}"
    response = clerk.api("PATCH", url, json={"start_date": "2026-03-01"})
    assert response.status_code == 400 and "2 steps" in response.json["errors"]["_schema"][0]
    response = clerk.api("PATCH", url, json={"steps": [{"start_date": "2026-03-01"}]})
    assert response.json["errors"] == {"steps": {"0": {"id": ["required"]}}}
    foreign = other["steps"][0]["id"]
    response = clerk.api("PATCH", url, json={"steps": [{"id": foreign, "node": "ct1"}]})
    assert response.json["errors"] == {"steps": {"0": {"id": ["not a step of this entry"]}}}
    response = clerk.api("PATCH", url, json={
        "study_type": "CTTHOR",  # with several steps: the procedure only
        "steps": [{"id": second, "study_type": "MRHEAD", "start_date": "2026-03-01"}],
    })  # fmt: skip
    assert response.status_code == 200, response.json
    steps = {s["id"]: s for s in response.json["steps"]}
    assert response.json["procedure_code"] == "CTTHOR"
    assert (steps[first]["modality"], steps[first]["start_date"]) == ("CT", "20260110")
    assert (steps[second]["protocol_code"], steps[second]["station_aet"],
            steps[second]["start_date"]) == ("MRHEAD", "MR1", "20260301")  # fmt: skip
    assert pacs.worklist.get(other["id"]) == other


def test_openapi_documents_the_patch_without_required_properties(clerk):
    document = clerk.get("/api/v1/openapi.json").json
    operation = document["paths"]["/api/v1/worklist/{entry_id}"]["patch"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    schemas = document["components"]["schemas"]

    def resolve(node: dict) -> dict:
        return schemas[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    body = resolve(schema)
    assert "required" not in body and {"patient_name", "steps", "node"} <= set(body["properties"])
    assert "required" not in resolve(body["properties"]["steps"]["items"])
    assert "409" in operation["responses"]


# -- console ---------------------------------------------------------------------------------


def test_console_edit_form(pacs, clerk, recorder):
    clerk.post("/worklist/new", ORDER)
    [entry] = pacs.worklist.search(patient_id="P42")
    assert f"/worklist/{entry['id']}" in clerk.get("/worklist/").text  # the Edit link
    page = clerk.get(f"/worklist/{entry['id']}").text
    step = entry["steps"][0]["id"]
    assert 'value="MARTIN^LEA"' in page and 'value="1980-02-03"' in page
    assert 'value="2026-01-15"' in page and 'value="09:30"' in page
    assert '<option value="ct1" selected>' in page
    form = {"patient_id": "P42", "patient_name": "MARTIN^LEA", "birth_date": "1980-02-03",
            "sex": "F", "accession_number": "ACC43", "referring_physician": "", "reason": "cough",
            f"step-{step}-study_type": "", f"step-{step}-node": "ct2",
            f"step-{step}-start_date": "2026-01-16",
            f"step-{step}-start_time": "10:45"}  # fmt: skip
    # no CSRF token: refused, nothing changed
    assert clerk.client.post(f"/worklist/{entry['id']}", data=form).status_code == 400
    bad = clerk.post(f"/worklist/{entry['id']}", {**form, f"step-{step}-start_time": "25:00"})
    assert bad.status_code == 200 and "a time HH:MM" in bad.text
    assert pacs.worklist.get(entry["id"]) == entry
    assert clerk.post(f"/worklist/{entry['id']}", form).status_code == 302
    changed = pacs.worklist.get(entry["id"])
    [after_step] = changed["steps"]
    assert changed["accession_number"] == "ACC43" and changed["patient_name"] == "MARTIN^LEA"
    assert (after_step["station_aet"], after_step["start_date"], after_step["start_time"]) == (
        "CT2", "20260116", "104500")  # fmt: skip
    before, after = events(pacs, recorder)[-1]
    assert before["accession_number"] == "ACC42" and after["accession_number"] == "ACC43"


def test_console_edit_of_an_in_progress_entry_asks_again(pacs, clerk, recorder):
    entry = two_step_entry(pacs, status="IN_PROGRESS")
    first, second = (s["id"] for s in entry["steps"])
    page = clerk.get(f"/worklist/{entry['id']}").text
    assert "IN_PROGRESS" in page and f'name="step-{second}-start_date"' in page
    form = {"patient_id": "P7", "patient_name": "DOE^JANE", "birth_date": "", "sex": "",
            "accession_number": "ACC7", "referring_physician": "", "reason": "",
            f"step-{first}-study_type": "", f"step-{first}-node": "",
            f"step-{first}-start_date": "2026-01-10", f"step-{first}-start_time": "",
            f"step-{second}-study_type": "MRHEAD", f"step-{second}-node": "",
            f"step-{second}-start_date": "2026-01-12", f"step-{second}-start_time": ""}  # fmt: skip
    confirm = clerk.post(f"/worklist/{entry['id']}", form)
    assert confirm.status_code == 200 and "Save anyway" in confirm.text
    assert f'name="step-{second}-start_date" value="2026-01-12"' in confirm.text
    assert pacs.worklist.get(entry["id"]) == entry
    assert clerk.post(f"/worklist/{entry['id']}", {**form, "confirm": "yes"}).status_code == 302
    steps = {s["id"]: s for s in pacs.worklist.get(entry["id"])["steps"]}
    assert steps[first] == entry["steps"][0]
    assert (steps[second]["protocol_code"], steps[second]["start_date"]) == ("MRHEAD", "20260112")
    assert events(pacs, recorder)[-1][1]["steps"][1]["modality"] == "MR"


def test_console_edit_rights(pacs):
    entry = two_step_entry(pacs)
    add_user("viewer", "simple user")
    viewer = Console(web_app(pacs))
    viewer.login("viewer")
    assert viewer.get(f"/worklist/{entry['id']}").status_code == 403
    assert viewer.post(f"/worklist/{entry['id']}", {"reason": "x"}).status_code == 403
    assert viewer.api("PATCH", f"/api/v1/worklist/{entry['id']}", json={}).status_code == 403
    assert pacs.worklist.get(entry["id"]) == entry


# -- a real server and DCMTK ---------------------------------------------------------------------


def http(server, method: str, path: str, body: dict | None = None) -> dict:
    token = base64.b64encode(f"desk:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def worklist_find(server, tmp_path: Path) -> list:
    out = tmp_path / f"mwl-{time.monotonic_ns()}"
    out.mkdir()
    args = ["-W", "-aet", "MODALITY", "-aec", server.aet, "-X", "-od", str(out)]
    for key in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate",
                "ScheduledProcedureStepSequence[0].Modality",
                "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription"):  # fmt: skip
        args += ["-k", key]
    result = run_dcmtk("findscu", *args, "127.0.0.1", str(server.dicom_port))
    assert result.returncode == 0, result.stdout + result.stderr
    return [dcmread(p) for p in sorted(out.glob("*.dcm"))]


def test_findscu_sees_the_edited_entry(pacs_home, tmp_path):
    pacs_home.cli("node", "add", "modality", "--aet", "MODALITY", "--host", "127.0.0.1",
                  "--port", "104", "--allow", "worklist")  # fmt: skip
    pacs_home.cli("node", "add", "mr1", "--aet", "MR1", "--host", "127.0.0.1", "--port", "105")
    pacs_home.cli("user", "add", "desk", "--profile", "secretary", input=PASSWORD + "\n")
    server = pacs_home.start()
    types = "/api/v1/worklist/study-types"
    mr_head = {"code": "MRHEAD", "description": "MR head", "modality": "MR", "nodes": ["mr1"]}
    http(server, "POST", types, mr_head)
    http(server, "POST", types, {"code": "CTTHOR", "description": "CT thorax", "modality": "CT"})
    entry = http(server, "POST", "/api/v1/worklist", {**ORDER, "node": ""})
    [found] = worklist_find(server, tmp_path)
    assert (str(found.PatientName), found.AccessionNumber) == ("MARTIN^LEA", "ACC42")
    http(server, "PATCH", f"/api/v1/worklist/{entry['id']}", {
        "patient_name": "MARTIN^LEA^MARIE", "accession_number": "ACC99",
        "birth_date": "1980-02-04", "study_type": "MRHEAD", "start_date": "2026-04-02",
        "start_time": "08:15",
    })  # fmt: skip
    [found] = worklist_find(server, tmp_path)
    sps = found.ScheduledProcedureStepSequence[0]
    assert (str(found.PatientName), found.PatientID, found.AccessionNumber,
            found.PatientBirthDate) == ("MARTIN^LEA^MARIE", "P42", "ACC99", "19800204")  # fmt: skip
    assert (sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepStartDate,
            sps.ScheduledProcedureStepDescription) == (
        "MR", "MR1", "20260402", "MR head")  # fmt: skip
    assert sps.ScheduledProcedureStepStartTime.startswith("0815")
    pacs_home.stop()
