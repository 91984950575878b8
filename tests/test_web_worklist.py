"""Worklist console pages and /api/v1/worklist: search, add from a study type, delete, reset,
clear; every change reaches on_worklist_change."""

from __future__ import annotations

import json

import pytest

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import Node, StudyType
from tests.webclient import Console, add_user, web_app


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
        Node.create(name="mr1", aet="MR1", host="127.0.0.1", port=105)
        StudyType.create(
            code="CTTHOR", description="CT thorax", modality="CT", nodes=json.dumps(["ct1"])
        )
    return pacs


@pytest.fixture
def app(pacs):
    return web_app(pacs)


@pytest.fixture
def clerk(app):
    add_user("clerk", "secretary")
    console = Console(app)
    assert console.login("clerk").status_code == 302
    return console


def events(pacs, recorder):
    pacs.outbox.drain()
    return recorder.events


def add_entry(pacs, patient_id="P1", name="DOE^JANE", status=None, steps=1, date="20260110"):
    step = {"modality": "CT", "start_date": date, "description": "CT thorax"}
    if status:
        step["status"] = status
    return pacs.worklist.create(
        {"patient_id": patient_id, "patient_name": name, "accession_number": f"A{patient_id}"},
        [{**step, "sps_id": str(i + 1)} for i in range(steps)],
    )


ENTRY_FORM = {
    "patient_id": "P42",
    "patient_name": "MARTIN^LEA",
    "birth_date": "1980-02-03",
    "sex": "F",
    "accession_number": "ACC42",
    "study_type": "CTTHOR",
    "node": "ct1",
    "start_date": "2026-01-15",
    "start_time": "09:30",
    "referring_physician": "",
    "reason": "cough",
}


def test_add_entry_from_a_study_type_fires_the_hook(pacs, clerk, recorder):
    response = clerk.post("/worklist/new", ENTRY_FORM)
    assert response.status_code == 302
    [entry] = pacs.worklist.search(patient_id="P42")
    assert entry["procedure_code"] == "CTTHOR"
    assert entry["birth_date"] == "19800203"
    [step] = entry["steps"]
    assert (step["modality"], step["station_aet"], step["start_date"], step["start_time"]) == (
        "CT",
        "CT1",
        "20260115",
        "093000",
    )
    assert step["status"] == "SCHEDULED"
    [(before, after)] = events(pacs, recorder)
    assert before is None and after["patient_id"] == "P42"
    page = clerk.get("/worklist/?patient_name=martin*").text
    assert "MARTIN^LEA" in page and "SCHEDULED" in page


def test_add_form_refuses_bad_input_and_keeps_nothing(pacs, clerk, recorder):
    bad = {**ENTRY_FORM, "node": "mr1", "start_time": "25:00", "patient_id": ""}
    response = clerk.post("/worklist/new", bad)
    assert response.status_code == 200
    assert "a time HH:MM" in response.text
    assert "Length must be between 1 and 64" in response.text
    response = clerk.post("/worklist/new", {**ENTRY_FORM, "node": "mr1"})
    assert "not a node allowed for this study type" in response.text
    assert pacs.worklist.search() == []
    assert events(pacs, recorder) == []


def test_search_filters_and_date_presets(pacs, clerk):
    add_entry(pacs, "P1", "DOE^JANE", date="20260110")
    add_entry(pacs, "P2", "SMITH^JOHN", date="20250101")
    page = clerk.get("/worklist/?patient_name=doe*").text
    assert "DOE^JANE" in page and "SMITH^JOHN" not in page
    page = clerk.get("/worklist/?date_preset=exact&date=2025-01-01").text
    assert "SMITH^JOHN" in page and "DOE^JANE" not in page
    page = clerk.get("/worklist/?accession=AP1").text
    assert "DOE^JANE" in page and "SMITH^JOHN" not in page
    page = clerk.get("/worklist/?date_preset=sometime")
    assert page.status_code == 200 and "Must be one of" in page.text


def test_delete_in_progress_entry_asks_again(pacs, clerk, recorder):
    entry = add_entry(pacs, status="IN_PROGRESS")
    response = clerk.post(f"/worklist/{entry['id']}/delete")
    assert response.status_code == 200 and "IN_PROGRESS" in response.text
    assert pacs.worklist.get(entry["id"]) is not None
    response = clerk.post(f"/worklist/{entry['id']}/delete", {"confirm": "yes"})
    assert response.status_code == 302
    assert pacs.worklist.get(entry["id"]) is None
    assert events(pacs, recorder)[-1][1] is None


def test_delete_step_reset_step_and_clear(pacs, clerk, recorder):
    entry = add_entry(pacs, steps=2)
    first, second = (s["id"] for s in entry["steps"])
    assert clerk.post(f"/worklist/steps/{first}/delete").status_code == 302
    assert [s["id"] for s in pacs.worklist.get(entry["id"])["steps"]] == [second]
    pacs.worklist.set_step_status(second, "DISCONTINUED")
    assert clerk.post(f"/worklist/steps/{second}/reset").status_code == 302
    assert pacs.worklist.get(entry["id"])["steps"][0]["status"] == "SCHEDULED"
    pacs.worklist.complete(entry["id"])
    busy = add_entry(pacs, "P9")
    confirm = clerk.post("/worklist/clear")
    assert confirm.status_code == 200 and 'name="confirm"' in confirm.text
    assert pacs.worklist.get(entry["id"]) is not None
    assert clerk.post("/worklist/clear", {"confirm": "yes"}).status_code == 302
    assert pacs.worklist.get(entry["id"]) is None
    assert pacs.worklist.get(busy["id"]) is not None
    statuses = [[s["status"] for s in after["steps"]] if after else None
                for _, after in events(pacs, recorder)]  # fmt: skip
    assert ["SCHEDULED"] in statuses and statuses[-1] is None


def test_csrf_missing_changes_nothing(pacs, clerk):
    entry = add_entry(pacs)
    response = clerk.client.post(f"/worklist/{entry['id']}/delete")
    assert response.status_code == 400
    assert pacs.worklist.get(entry["id"]) is not None


def test_rights_and_anonymous(pacs, app):
    add_user("viewer", "simple user")
    viewer = Console(app)
    viewer.login("viewer")
    entry = add_entry(pacs)
    assert viewer.get("/worklist/").status_code == 403
    assert viewer.post(f"/worklist/{entry['id']}/delete").status_code == 403
    assert viewer.api("GET", "/api/v1/worklist").status_code == 403
    assert pacs.worklist.get(entry["id"]) is not None
    anonymous = Console(app)
    response = anonymous.get("/worklist/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert anonymous.api("GET", "/api/v1/worklist").status_code == 401


def test_study_type_pages(pacs, clerk):
    response = clerk.post(
        "/worklist/study-types/new",
        {"code": "MRHEAD", "description": "MR head", "modality": "MR", "duration_minutes": "30",
         "nodes": "mr1"},
    )  # fmt: skip
    assert response.status_code == 302
    with connection():
        created = StudyType.get(StudyType.code == "MRHEAD")
    assert json.loads(created.nodes) == ["mr1"] and created.duration_minutes == 30
    response = clerk.post(
        "/worklist/study-types/new", {"code": "X", "duration_minutes": "0", "nodes": "nowhere"}
    )
    assert "Must be greater than or equal to 1" in response.text
    assert "MR head" in clerk.get("/worklist/study-types").text
    assert clerk.post(f"/worklist/study-types/{created.id}/delete").status_code == 302
    with connection():
        assert StudyType.get_or_none(StudyType.code == "MRHEAD") is None


def test_api_create_search_delete_reset_clear(pacs, clerk, recorder):
    body = {k: v for k, v in ENTRY_FORM.items() if v}
    response = clerk.api("POST", "/api/v1/worklist", json=body)
    assert response.status_code == 201, response.json
    entry = response.json
    assert entry["steps"][0]["station_aet"] == "CT1"
    found = clerk.api("GET", "/api/v1/worklist?patient_name=MARTIN*&modality=CT").json
    assert [e["id"] for e in found] == [entry["id"]]
    step_id = entry["steps"][0]["id"]
    pacs.worklist.set_step_status(step_id, "IN_PROGRESS")
    assert clerk.api("DELETE", f"/api/v1/worklist/steps/{step_id}").status_code == 409
    reset = clerk.api("POST", f"/api/v1/worklist/steps/{step_id}/reset")
    assert reset.json["steps"][0]["status"] == "SCHEDULED"
    pacs.worklist.set_step_status(step_id, "IN_PROGRESS")
    assert clerk.api("DELETE", f"/api/v1/worklist/{entry['id']}").status_code == 409
    response = clerk.api("DELETE", f"/api/v1/worklist/{entry['id']}?confirm=yes")
    assert response.status_code == 204
    assert clerk.api("GET", f"/api/v1/worklist/{entry['id']}").status_code == 404
    done = add_entry(pacs, "P5", status="COMPLETED")
    assert clerk.api("POST", "/api/v1/worklist/clear").json == {"deleted": 1}
    assert pacs.worklist.get(done["id"]) is None
    kinds = [(before is None, after is None) for before, after in events(pacs, recorder)]
    assert kinds[0] == (True, False) and kinds.count((False, True)) == 2


def test_api_validation_errors(pacs, clerk):
    response = clerk.api(
        "POST", "/api/v1/worklist", json={"study_type": "NOPE", "colour": "red", "sex": "X"}
    )
    assert response.status_code == 400
    errors = response.json["errors"]
    assert set(errors) == {"patient_id", "colour", "sex"}
    response = clerk.api("POST", "/api/v1/worklist", json={"patient_id": "P", "study_type": "NOPE"})
    assert response.json["errors"] == {"study_type": ["no such study type"]}
    response = clerk.api("POST", "/api/v1/worklist/study-types", json={"code": "A", "nodes": ["?"]})
    assert response.status_code == 400 and "nodes" in response.json["errors"]
    response = clerk.api("GET", "/api/v1/worklist?status=SLEEPING")
    assert response.status_code == 400 and "status" in response.json["errors"]
    assert pacs.worklist.search() == []


def test_api_study_types(clerk):
    created = clerk.api(
        "POST", "/api/v1/worklist/study-types", json={"code": "US", "modality": "US"}
    ).json
    changed = clerk.api(
        "PATCH", f"/api/v1/worklist/study-types/{created['id']}", json={"duration_minutes": 45}
    ).json
    assert (changed["modality"], changed["duration_minutes"]) == ("US", 45)
    codes = [t["code"] for t in clerk.api("GET", "/api/v1/worklist/study-types").json]
    assert codes == ["CTTHOR", "US"]
    assert clerk.api("DELETE", f"/api/v1/worklist/study-types/{created['id']}").status_code == 204
    paths = clerk.get("/api/v1/openapi.json").json["paths"]
    assert {"/api/v1/worklist", "/api/v1/worklist/clear"} <= set(paths)


def test_delete_in_progress_step_asks_again_and_edit_study_type(pacs, clerk):
    entry = add_entry(pacs, steps=2)
    busy = entry["steps"][0]["id"]
    pacs.worklist.set_step_status(busy, "IN_PROGRESS")
    page = clerk.post(f"/worklist/steps/{busy}/delete")
    assert page.status_code == 200 and "Delete anyway" in page.text
    assert len(pacs.worklist.get(entry["id"])["steps"]) == 2
    assert clerk.post(f"/worklist/steps/{busy}/delete", {"confirm": "yes"}).status_code == 302
    assert len(pacs.worklist.get(entry["id"])["steps"]) == 1
    with connection():
        type_id = StudyType.get(StudyType.code == "CTTHOR").id
    form = clerk.get(f"/worklist/study-types/{type_id}").text
    assert 'value="ct1"' in form and 'value="CT thorax"' in form
    changed = clerk.post(
        f"/worklist/study-types/{type_id}",
        {"code": "CTTHOR", "description": "CT chest", "modality": "CT", "duration_minutes": "20",
         "nodes": "ct1, mr1"},
    )  # fmt: skip
    assert changed.status_code == 302
    with connection():
        assert json.loads(StudyType.get_by_id(type_id).nodes) == ["ct1", "mr1"]
    assert clerk.get("/worklist/study-types/999999").status_code == 404
