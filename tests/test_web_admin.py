"""Administration pages and API: nodes, storages, plugins, users, profiles, settings,
log, audit, jobs, and the OpenAPI document."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
from marshmallow import Schema, fields, validate

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import AuditEvent, Node, Profile, Storage, User
from tests.conftest import dcmtk, free_port, wait_for_port
from tests.webclient import Console, add_user, basic, web_app


class TunedSettings(Schema):
    threshold = fields.Integer(load_default=5, validate=validate.Range(min=1, max=100))
    mode = fields.String(load_default="fast", validate=validate.OneOf(["fast", "safe"]))
    verbose = fields.Boolean(load_default=False)
    targets = fields.List(fields.String(), load_default=list)
    api_password = fields.String(load_default="")


class Tuned:
    @hookimpl
    def settings_schema(self):
        return TunedSettings()


@pytest.fixture
def pacs(make_pacs):
    return make_pacs(Tuned())


@pytest.fixture
def app(pacs):
    return web_app(pacs)


@pytest.fixture
def console(app):
    add_user("root", "system administrator")
    console = Console(app)
    console.login("root")
    return console


def audited(action: str) -> list[AuditEvent]:
    with connection():
        return list(AuditEvent.select().where(AuditEvent.action == action))


def test_nodes_create_edit_echo_delete(console, pacs):
    port = free_port()
    form = {"name": "modality", "aet": "ECHOSCP", "host": "127.0.0.1", "port": str(port),
            "enabled": "on", "allow_store": "on", "allow_find": "on"}  # fmt: skip
    bad = console.post("/nodes/new", {**form, "port": "70000", "aet": "X" * 17})
    assert bad.status_code == 200 and "Must be greater" in bad.text and "16 printable" in bad.text
    assert console.post("/nodes/new", form).status_code == 302
    with connection():
        node = Node.get()
    assert node.rights() == ["store", "find"]
    assert pacs.nodes.allows("ECHOSCP", "find")
    assert "already exists" in console.post("/nodes/new", form).text

    # echo: refused while nothing listens, success against DCMTK's storescp
    assert "failed" in console.get(console.post(f"/nodes/{node.id}/echo").location).text
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "ECHOSCP", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, process=scp)
        assert "success" in console.get(console.post(f"/nodes/{node.id}/echo").location).text
        result = console.api("POST", f"/api/v1/nodes/{node.id}/echo").json
        assert result["success"] is True and result["milliseconds"] > 0
    finally:
        scp.terminate()
        scp.wait(timeout=10)

    assert console.post(f"/nodes/{node.id}", {**form, "description": "room 2"}).status_code == 302
    changed = console.api("PATCH", f"/api/v1/nodes/{node.id}", json={"allow_find": False}).json
    assert changed["description"] == "room 2" and changed["allow_find"] is False
    assert console.post(f"/nodes/{node.id}/delete").status_code == 302
    with connection():
        assert not Node.select().exists()
    assert [e.target for e in audited("node_save")] == ["modality", "modality", "modality"]


def test_storages_show_free_space_and_keep_their_path(console, tmp_path):
    page = console.get("/storages/").text
    assert "default" in page and "Free now" in page
    folder = tmp_path / "second"
    form = {"name": "second", "path": str(folder), "enabled": "on", "min_free_mb": "10"}
    assert "absolute path" in console.post("/storages/new", {**form, "path": "rel"}).text
    assert console.post("/storages/new", form).status_code == 302
    assert folder.is_dir()
    listed = console.client.get("/api/v1/storages").json
    second = next(s for s in listed if s["name"] == "second")
    assert second["free_mb"] > 0 and second["enabled"] is True
    response = console.api("PATCH", f"/api/v1/storages/{second['id']}", json={"path": "/tmp"})
    assert response.status_code == 400 and "cannot change" in json.dumps(response.json)
    response = console.api("PATCH", f"/api/v1/storages/{second['id']}", json={"enabled": False})
    assert response.json["enabled"] is False
    assert console.api("DELETE", f"/api/v1/storages/{second['id']}").status_code == 204
    with connection():
        assert [s.name for s in Storage.select()] == ["default"]


def test_plugin_settings_form_validates_persists_and_applies(console, pacs):
    page = console.get("/plugins/").text
    assert "tuned" in page and "send" in page and "built-in" in page
    form = console.get("/plugins/tuned/settings").text
    assert 'name="threshold"' in form and '<option value="safe"' in form
    bad = console.post("/plugins/tuned/settings", {"threshold": "500", "mode": "slow"})
    assert "less than or equal to 100" in bad.text and "Must be one of" in bad.text
    with connection():
        assert pacs.plugin_settings("tuned")["threshold"] == 5
    saved = console.post(
        "/plugins/tuned/settings",
        {"threshold": "42", "mode": "safe", "verbose": "on", "targets": "a, b",
         "api_password": "s3cret"},
    )  # fmt: skip
    assert saved.status_code == 302
    with connection():
        settings = pacs.plugin_settings("tuned")
    assert settings == {"threshold": 42, "mode": "safe", "verbose": True, "targets": ["a", "b"],
                        "api_password": "s3cret"}  # fmt: skip
    assert "s3cret" not in console.get("/plugins/tuned/settings").text
    api = console.api("PATCH", "/api/v1/plugins/tuned/settings", json={"threshold": "many"})
    assert api.status_code == 400 and api.json["errors"] == {"threshold": ["Not a valid integer."]}
    api = console.api("PATCH", "/api/v1/plugins/tuned/settings", json={"threshold": 7})
    assert api.json["threshold"] == 7
    assert console.get("/plugins/send/settings").status_code == 404
    assert "cannot be disabled" in console.get(console.post("/plugins/send/disable").location).text


def test_users_and_profiles(console):
    form = {"login": "nurse", "profile": "technician", "status": "active", "services": "A, B",
            "email": "n@example.org", "password": "short"}  # fmt: skip
    assert "at least 10" in console.post("/users/new", form).text
    assert console.post("/users/new", {**form, "password": "long enough pass"}).status_code == 302
    with connection():
        nurse = User.get(User.login == "nurse")
    assert json.loads(nurse.services) == ["A", "B"] and nurse.password_hash.startswith("scrypt$")
    assert Console(console.app).login("nurse", "long enough pass").status_code == 302

    # profiles: a new one, rights from the matrix, deletion needs a replacement when in use
    console.post("/users/profiles/new", {"name": "night shift"})
    with connection():
        night = Profile.get(Profile.name == "night shift")
        rights = {f"{p.id}:{r}": "on" for p in Profile.select() for r in json.loads(p.rights)}
    rights[f"{night.id}:view_studies"] = "on"
    console.post("/users/profiles", rights)
    with connection():
        assert json.loads(Profile.get_by_id(night.id).rights) == ["view_studies"]
        assert json.loads(Profile.get(Profile.name == "radiologist").rights) == [
            "view_studies", "download", "send"]  # fmt: skip
    console.api("PATCH", f"/api/v1/users/{nurse.id}", json={"profile": "night shift"})
    confirm = console.get(f"/users/profiles/{night.id}/delete").text
    assert "1 user(s)" in confirm and "Replacement profile" in confirm
    response = console.api("DELETE", f"/api/v1/profiles/{night.id}")
    assert response.status_code == 400 and "replacement" in response.json["errors"]
    console.post(
        f"/users/profiles/{night.id}/delete", {"confirm": "yes", "replacement": "secretary"}
    )
    with connection():
        assert User.get_by_id(nurse.id).profile == "secretary"
        assert not Profile.select().where(Profile.name == "night shift").exists()
        builtin = Profile.get(Profile.name == "referring")
    response = console.api("DELETE", f"/api/v1/profiles/{builtin.id}")
    assert response.status_code == 400 and "default profile" in json.dumps(response.json)


def test_settings_page_and_api_are_validated_and_audited(console, pacs):
    page = console.get("/settings/").text
    assert "session minutes" in page and "api ip allowlist" in page
    bad = console.api("PATCH", "/api/v1/settings", json={"lock_minutes": 0, "nope": 1})
    assert bad.status_code == 400 and set(bad.json["errors"]) == {"lock_minutes", "nope"}
    ok = console.api("PATCH", "/api/v1/settings", json={"max_failed_logins": 7})
    assert ok.json["max_failed_logins"] == 7
    with connection():
        assert pacs.settings.core["max_failed_logins"] == 7
    [event] = audited("settings_change")
    assert json.loads(event.details) == {"changes": {"max_failed_logins": 7}}


def test_audit_filters_and_jobs_page(console, pacs):
    job = pacs.jobs.enqueue("no_such_kind", {"x": 1})
    taken = pacs.jobs.take(["no_such_kind"], "test")
    pacs.jobs.run(taken)
    page = console.get("/jobs/?state=pending").text
    assert "no handler for job kind" in page
    assert console.post(f"/jobs/{job}/retry").status_code == 302
    assert console.client.get("/api/v1/jobs?state=pending").json[0]["id"] == job
    assert console.client.get("/api/v1/jobs?state=bogus").status_code == 400
    assert console.post(f"/jobs/{job}/delete").status_code == 302
    assert pacs.jobs.get(job) is None
    audit = console.client.get("/api/v1/audit?action=job_delete").json
    assert [e["target"] for e in audit] == [str(job)]
    assert "job_retry" in console.get("/audit/?actor=root").text
    assert console.get("/audit/?date_from=yesterday").status_code == 400


def test_log_page_shows_lines_changes_level_and_refuses_traversal(console, pacs):
    log_dir = pacs.config.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "pacscore.log").write_text("first line\nlast line\n")
    (pacs.config.home / "secret.txt").write_text("do not serve")
    assert "last line" in console.get("/log/").text
    assert console.get("/log/download/pacscore.log").data == b"first line\nlast line\n"
    for name in ("..%2Fsecret.txt", "..%2F..%2Fpacscore.toml", "%2E%2E%2Fsecret.txt"):
        response = console.get(f"/log/download/{name}")
        assert response.status_code == 404 and b"do not serve" not in response.data
    root = logging.getLogger()
    before = root.level
    try:
        assert console.post("/log/level", {"level": "DEBUG"}).status_code == 302
        assert root.level == logging.DEBUG
        assert console.post("/log/level", {"level": "LOUD"}).status_code == 400
    finally:
        root.setLevel(before)


def test_openapi_document_covers_the_api_with_schemas(app):
    document = app.test_client().get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/nodes"])
    assert "/api/v1/studies/{uid}/download" in paths
    body = paths["/api/v1/nodes"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/Node")
    node = document["components"]["schemas"]["Node"]
    assert node["properties"]["port"]["maximum"] == 65535
    query = {p["name"] for p in paths["/api/v1/studies"]["get"]["parameters"]}
    assert {"patient_name", "modalities", "date_preset", "page"} <= query
    assert paths["/api/v1/studies"]["get"]["security"] == [{"token": []}, {"basic": []}]
    assert "security" not in paths["/api/v1/health"]["get"]


def test_api_user_management(console):
    created = console.api("POST", "/api/v1/users", json={
        "login": "api-user", "profile": "referring", "password": "a long password",
        "services": ["CARDIO"]})  # fmt: skip
    assert created.status_code == 201, created.json
    assert created.json["services"] == ["CARDIO"] and "password" not in created.json
    client = console.app.test_client()
    assert (
        client.get("/api/v1/studies", headers=basic("api-user", "a long password")).status_code
        == 200
    )
    bad = console.api("POST", "/api/v1/users", json={"login": "x y", "profile": "nope"})
    assert bad.status_code == 400 and "login" in bad.json["errors"]
    unknown = console.api(
        "POST",
        "/api/v1/users",
        json={"login": "z", "profile": "nope", "password": "a long password"},
    )
    assert unknown.json["errors"] == {"profile": ["unknown profile"]}


def test_an_administrator_cannot_lock_themselves_out(console):
    with connection():
        me = User.get(User.login == "root")
        admin_profile = Profile.get(Profile.name == "system administrator")
    response = console.api("PATCH", f"/api/v1/users/{me.id}", json={"profile": "referring"})
    assert response.status_code == 400 and "manage users" in response.json["errors"]["profile"][0]
    response = console.api("PATCH", f"/api/v1/users/{me.id}", json={"status": "disabled"})
    assert response.status_code == 400
    response = console.api(
        "PATCH", f"/api/v1/profiles/{admin_profile.id}", json={"rights": ["view_studies"]}
    )
    assert response.status_code == 400
    page = console.get(console.post("/users/profiles", {}).location).text
    assert "must keep manage_users" in page
    with connection():
        assert "manage_users" in json.loads(Profile.get_by_id(admin_profile.id).rights)
        assert User.get_by_id(me.id).profile == "system administrator"
    assert console.get("/users/").status_code == 200
