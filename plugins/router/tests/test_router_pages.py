"""The router's console pages and API routes: rules listed, created, edited (with the
validation errors next to their fields, the prior-syntax position included), enabled,
disabled, deleted after confirmation; "resend a study" queues send jobs; CSRF and rights."""

from __future__ import annotations

import pacscore_router
import pytest

from pacscore.db import connection
from pacscore.models import Job, Node
from tests.conftest import new_pacs
from tests.webclient import Console, add_user, store_instance, web_app

pytestmark = pytest.mark.timeout(60)

RULE_FORM = {
    "name": "cardio to viewer",
    "enabled": "on",
    "priority": "10",
    "combine": "ANY",
    "items": "Modality CT\n(0008,0080) CARDIO*",
    "calling_ae": "SCANNER*",
    "called_ae": "",
    "modality": "",
    "time_start": "20:00",
    "time_end": "06:00",
    "action_rows": "2",
    "action-0-type": "PUSH",
    "action-0-node": "viewer",
    "action-0-per_instance": "on",
    "action-1-type": "AUTO_FETCHING",
    "action-1-node": "viewer",
    "action-1-priors": "3 MG ; 2 US",
}


@pytest.fixture
def pacs(tmp_path):
    """The pages are thin over rules.py (tested on both databases): SQLite is enough."""
    pacs = new_pacs(tmp_path / "home", "sqlite:///index.db")
    pacs.hooks.register(pacscore_router, name="router")
    pacs.prepare_plugin_tables()
    with connection():
        for name in ("viewer", "archive"):
            Node.create(name=name, aet=name.upper(), host="127.0.0.1", port=11112)
    pacs.nodes.invalidate()
    yield pacs
    pacs.database.close_all()


@pytest.fixture
def app(pacs):
    return web_app(pacs)


def console_for(app, login: str, profile: str) -> Console:
    add_user(login, profile)
    console = Console(app)
    console.login(login)
    return console


def rules(pacs) -> list[dict]:
    with connection():
        return pacscore_router.rules.list_rules(pacs)


def test_create_list_edit_enable_delete_a_rule(app, pacs):
    console = console_for(app, "root", "system administrator")
    assert console.post("/router/new", RULE_FORM).status_code == 302
    (rule,) = rules(pacs)
    assert rule["filters"]["combine"] == "ANY" and rule["filters"]["items"] == [
        {"tag": "Modality", "pattern": "CT"},
        {"tag": "(0008,0080)", "pattern": "CARDIO*"},
    ]
    assert rule["filters"]["time_window"] == {"start": "20:00", "end": "06:00"}
    assert [(a["type"], a["per_instance"], a["priors"]) for a in rule["actions"]] == [
        ("PUSH", True, ""),
        ("AUTO_FETCHING", False, "3 MG ; 2 US"),
    ]
    listing = console.get("/router/").text
    for shown in ("cardio to viewer", "ANY(Modality=CT, (0008,0080)=CARDIO*)", "20:00-06:00",
                  "PUSH per instance", "AUTO_FETCHING 3 MG ; 2 US", "viewer"):  # fmt: skip
        assert shown in listing
    assert "already exists" in console.post("/router/new", RULE_FORM).text

    # edit: the form shows the rule; rename it and drop the fetching action
    form = console.get("/router/edit?name=cardio to viewer").text
    assert "3 MG ; 2 US" in form and "CARDIO*" in form
    edited = {**RULE_FORM, "name": "cardio", "action-1-type": "", "action-0-node": "archive"}
    assert console.post("/router/edit?name=cardio to viewer", edited).status_code == 302
    (rule,) = rules(pacs)
    assert rule["name"] == "cardio" and [a["node"] for a in rule["actions"]] == ["archive"]

    console.post("/router/enabled", {"name": "cardio", "enabled": "no"})
    assert rules(pacs)[0]["enabled"] is False
    console.post("/router/enabled", {"name": "cardio", "enabled": "yes"})
    assert rules(pacs)[0]["enabled"] is True

    confirm = console.get("/router/delete?name=cardio")
    assert 'name="confirm" value="yes"' in confirm.text
    console.post("/router/delete", {"name": "cardio"})  # not confirmed: kept
    assert len(rules(pacs)) == 1
    assert console.post("/router/delete", {"name": "cardio", "confirm": "yes"}).status_code == 302
    assert rules(pacs) == []
    assert console.get("/router/edit?name=cardio").status_code == 404


def test_errors_are_shown_next_to_their_fields_and_nothing_is_saved(app, pacs):
    console = console_for(app, "root", "system administrator")
    bad = {**RULE_FORM, "items": "Modality CT\nNotAKeyword X", "time_start": "25:00",
           "action-1-priors": "3 MG ; two US", "priority": "high"}  # fmt: skip
    page = console.post("/router/new", bad)
    assert page.status_code == 200
    assert "line 2: unknown DICOM keyword or tag" in page.text
    assert "Not a valid integer." in page.text
    priors_error = page.text.split('name="action-1-priors"')[1].split("</td>")[0]
    assert "at character" in priors_error  # the position of the prior-syntax error
    assert 'value="3 MG ; two US"' in page.text  # what the user typed is kept
    unknown_node = console.post("/router/new", {**RULE_FORM, "action-0-node": "nowhere"})
    assert "unknown node(s): nowhere" in unknown_node.text
    no_action = console.post("/router/new", {**RULE_FORM, "action-0-type": "", "action-1-type": ""})
    assert "Shorter than minimum length 1." in no_action.text
    assert rules(pacs) == []


def test_resend_a_study_queues_send_jobs(app, pacs, tmp_path):
    console = console_for(app, "root", "system administrator")
    console.post("/router/new", RULE_FORM)
    study_uid = store_instance(pacs, tmp_path / "src")
    with connection():
        Job.delete().execute()  # the store may have queued the rule's own sends
    done = console.post("/router/resend", {"rule": "cardio to viewer", "study_uid": study_uid})
    assert "1 send job(s) queued" in console.get(done.location).text
    api = console.api("POST", "/api/v1/router/rules/cardio to viewer/resend",
                      json={"study_uid": study_uid})  # fmt: skip
    assert api.status_code == 202 and len(api.json["job_ids"]) == 1
    with connection():
        assert Job.select().where(Job.kind == "router.send").count() == 2
    assert console.post("/router/resend", {"rule": "cardio to viewer",
                                            "study_uid": "../etc"}).status_code == 400  # fmt: skip


def test_api_rules(app, pacs):
    console = console_for(app, "root", "system administrator")
    rule = {"name": "all CT", "filters": {"modality": "CT"},
            "actions": [{"type": "PUSH", "node": "viewer"}]}  # fmt: skip
    created = console.api("POST", "/api/v1/router/rules", json=rule)
    assert created.status_code == 201 and created.json["priority"] == 100
    assert console.api("POST", "/api/v1/router/rules", json=rule).status_code == 400
    listed = console.api("GET", "/api/v1/router/rules").json["rules"]
    assert [r["name"] for r in listed] == ["all CT"]

    fetching = [{"type": "PRE_FETCHING", "node": "viewer", "priors": "3 MG ;; 2"}]
    bad_rule = {**rule, "colour": "red", "actions": fetching}
    bad = console.api("PUT", "/api/v1/router/rules/all CT", json=bad_rule)
    assert bad.status_code == 400
    assert "at character" in bad.json["errors"]["actions"]["0"]["priors"][0]
    assert bad.json["errors"]["colour"] == ["Unknown field."]

    renamed = console.api("PUT", "/api/v1/router/rules/all CT", json={**rule, "name": "CT"})
    assert renamed.status_code == 200 and [r["name"] for r in rules(pacs)] == ["CT"]
    off = console.api("PATCH", "/api/v1/router/rules/CT", json={"enabled": False})
    assert off.json["enabled"] is False
    assert console.api("PATCH", "/api/v1/router/rules/CT", json={"enabled": "x"}).status_code == 400
    assert console.api("DELETE", "/api/v1/router/rules/CT").status_code == 204
    assert console.api("GET", "/api/v1/router/rules/CT").status_code == 404


def test_csrf_and_rights(app, pacs):
    admin = console_for(app, "root", "system administrator")
    no_token = admin.client.post("/router/new", data=RULE_FORM)
    assert no_token.status_code == 400 and rules(pacs) == []

    assert 'href="/router/">Routing</a>' in admin.get("/router/").text  # in the header
    user = console_for(app, "joe", "simple user")
    account = user.get("/account").text
    assert 'id="logout"' in account and 'href="/router/"' not in account
    assert user.get("/router/").status_code == 403
    assert user.post("/router/new", RULE_FORM).status_code == 403
    assert user.api("GET", "/api/v1/router/rules").status_code == 403
    assert user.api("POST", "/api/v1/router/rules", json={}).status_code == 403
    # a technician may send studies but not configure rules
    tech = console_for(app, "tech", "technician")
    assert tech.get("/router/").status_code == 403
    assert tech.post("/router/resend", {"rule": "x", "study_uid": "1.2"}).status_code == 404
    assert user.post("/router/resend", {"rule": "x", "study_uid": "1.2"}).status_code == 403

    assert Console(app).get("/router/").status_code == 302
    assert Console(app).api("GET", "/api/v1/router/rules").status_code == 401
    assert rules(pacs) == []
