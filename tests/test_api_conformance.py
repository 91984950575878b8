"""The REST API against its own OpenAPI document (/api/v1/openapi.json).

The document is valid OpenAPI (openapi-spec-validator), it describes every
/api/v1 route of the application -- the core's and the bundled plugins' -- and
a bounded, deterministic schemathesis run over every operation, as an
administrator, meets no server error, no undocumented status code and no
response that contradicts the document, on SQLite and PostgreSQL.  Focused
tests pin each defect such runs found.
"""

from __future__ import annotations

import io
import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate as validate_openapi
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from pacscore.db import connection, db, utcnow
from pacscore.models import AppliedMigration, Job, SchemaVersion, Study, User
from pacscore.users import hash_password
from pacscore.web.converters import MAX_ID
from pacscore.web.openapi import undocumented_routes
from pacscore.web.security import new_api_token
from tests.conftest import new_pacs
from tests.pki import TestCA
from tests.webclient import PASSWORD, Console, add_user, basic, bearer, store_instance, web_app

pytestmark = pytest.mark.timeout(300)

PLUGIN_PREFIXES = ("/api/v1/router/", "/api/v1/purge/", "/api/v1/email/", "/api/v1/apicrypt/")
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
# per operation, generation mode and path (free or the seeded rows' ids); a longer
# search, by hand: PACSCORE_FUZZ_EXAMPLES=200 pytest tests/test_api_conformance.py -k schemathesis
MAX_EXAMPLES = int(os.environ.get("PACSCORE_FUZZ_EXAMPLES", "6"))
TOO_BIG = str(2**64 + 12345)  # beyond 64 bits: the database raised (500)
OFFSET = re.compile(r"(Z|[+-]\d\d:\d\d)$")


def plugin_pacs(home: Path, db_url: str):
    """A Pacs with the built-ins and every installed plugin, as ``pacscore serve`` loads them."""
    pacs = new_pacs(home, db_url)
    pacs.hooks.load_entry_points()
    pacs.prepare_plugin_tables()
    return pacs


@pytest.fixture
def pacs(tmp_path, db_url):
    pacs = plugin_pacs(tmp_path / "home", db_url)
    yield pacs
    pacs.database.close_all()


@pytest.fixture
def admin(pacs):
    """(Flask test client, headers of an administrator's API token)."""
    return admin_client(pacs)


@pytest.fixture
def document_admin(tmp_path):
    """``admin`` on SQLite only: the document does not depend on the database."""
    pacs = plugin_pacs(tmp_path / "home", "sqlite:///index.db")
    yield admin_client(pacs)
    pacs.database.close_all()


def admin_client(pacs):
    add_user("root", "system administrator")
    with connection():
        token = new_api_token(User.get(User.login == "root"), "tests")
    return web_app(pacs).test_client(), bearer(token)


def document_of(client) -> dict:
    return client.get("/api/v1/openapi.json").json


# -- the document ---------------------------------------------------------------------


def test_openapi_document_is_valid(document_admin):
    client, _ = document_admin
    document = document_of(client)
    validate_openapi(document)  # raises on any error, e.g. a default that breaks its format
    paths = document["paths"]
    for prefix in PLUGIN_PREFIXES:  # the bundled plugins' routes are described too
        assert any(path.startswith(prefix) for path in paths), prefix


def test_every_api_route_of_core_and_plugins_is_documented(document_admin):
    client, _ = document_admin
    app = client.application
    assert undocumented_routes(app) == []
    documented = {
        (method.upper(), path) for path, item in document_of(client)["paths"].items()
        for method in item
    }  # fmt: skip
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (method, path) in documented, f"{method} {path} is not in the document"


def test_a_plugin_route_without_doc_is_reported(document_admin):
    from flask import Blueprint

    from pacscore.web.security import require_right

    app = document_admin[0].application
    extra = Blueprint("undocumented", __name__, url_prefix="/api/v1/undocumented")

    @extra.get("/thing")
    @require_right("configure")
    def thing():
        return {}

    app.register_blueprint(extra)
    assert undocumented_routes(app) == ["GET /api/v1/undocumented/thing"]


def test_patch_bodies_require_nothing_and_have_no_defaults(document_admin):
    client, headers = document_admin
    document = document_of(client)
    for path, item in document["paths"].items():
        if "patch" not in item or "requestBody" not in item["patch"]:
            continue
        schema = item["patch"]["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" not in schema:
            continue
        name = schema["$ref"].rsplit("/", 1)[1]
        body = document["components"]["schemas"][name]
        whole = name in ("PluginChange", "RuleEnabled")  # the one field is the change
        assert whole or (not body.get("required") and name.endswith("Patch")), (path, body)
        assert not any("default" in p for p in body.get("properties", {}).values()), path
    created = client.post("/api/v1/nodes", headers=headers, json={
        "name": "ct", "aet": "CT1", "host": "127.0.0.1", "port": 104})  # fmt: skip
    changed = client.patch(f"/api/v1/nodes/{created.json['id']}", headers=headers,
                           json={"description": "scanner 1"})  # fmt: skip
    assert changed.status_code == 200 and changed.json["port"] == 104
    assert changed.json["allow_find"] is False  # not reset to a default


def test_a_profile_is_created_without_rights_as_documented(admin):
    client, headers = admin
    profile = document_of(client)["components"]["schemas"]["Profile"]
    assert "rights" not in profile["required"]
    assert profile["properties"]["rights"] == {
        "type": "array", "items": {"type": "string"}, "default": []}  # fmt: skip
    created = client.post("/api/v1/profiles", headers=headers, json={"name": "night shift"})
    assert created.status_code == 201 and created.json["rights"] == []
    bad = client.post("/api/v1/profiles", headers=headers, json={"name": "x", "rights": "all"})
    assert bad.status_code == 400 and "rights" in bad.json["errors"]


def test_an_account_without_email_conforms(admin):
    client, headers = admin
    document = document_of(client)
    email = document["components"]["schemas"]["User"]["properties"]["email"]
    assert email["default"] == "" and "format" not in email  # "" is not an e-mail
    created = client.post(
        "/api/v1/users",
        headers=headers,
        json={"login": "clerk", "profile": "secretary", "password": "a long password", "email": ""},
    )
    assert created.status_code == 201 and created.json["email"] == ""
    bad = client.patch(f"/api/v1/users/{created.json['id']}", headers=headers,
                       json={"email": "not-an-address"})  # fmt: skip
    assert bad.status_code == 400 and "email" in bad.json["errors"]


# -- ids beyond 64 bits, pages beyond the database's offsets ----------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/nodes/{}"), ("PATCH", "/api/v1/nodes/{}"), ("DELETE", "/api/v1/nodes/{}"),
    ("POST", "/api/v1/nodes/{}/echo"), ("GET", "/api/v1/users/{}"),
    ("DELETE", "/api/v1/profiles/{}"), ("PATCH", "/api/v1/storages/{}"),
    ("POST", "/api/v1/jobs/{}/retry"), ("GET", "/api/v1/worklist/{}"),
    ("PATCH", "/api/v1/worklist/study-types/{}"), ("DELETE", "/api/v1/worklist/study-types/{}"),
    ("POST", "/api/v1/worklist/steps/{}/reset"), ("DELETE", "/api/v1/apicrypt/certificates/{}"),
])  # fmt: skip
def test_an_id_beyond_64_bits_is_not_found(admin, method, path):
    client, headers = admin
    for value in (TOO_BIG, str(MAX_ID + 1)):
        response = client.open(path.format(value), method=method, headers=headers, json={})
        assert response.status_code == 404, (path, value, response.json)
        assert response.json["error"] == "not found"
    largest = client.open(path.format(MAX_ID), method=method, headers=headers, json={})
    assert largest.status_code in (400, 404)  # a valid id of no row


def test_a_console_page_with_an_id_beyond_64_bits_is_not_found(admin):
    client, _ = admin
    console = Console(client.application)
    assert console.login("root").status_code == 302
    for page in (f"/nodes/{TOO_BIG}", f"/worklist/study-types/{TOO_BIG}", f"/users/{TOO_BIG}"):
        assert console.get(page).status_code == 404, page
    assert console.get(f"/jobs/?page={TOO_BIG}").status_code == 200  # the last page shown


@pytest.mark.parametrize("path", ["/api/v1/studies", "/api/v1/audit", "/api/v1/jobs"])
def test_a_page_beyond_the_database_offsets_is_refused(admin, path):
    client, headers = admin
    response = client.get(f"{path}?page={TOO_BIG}", headers=headers)
    assert response.status_code == 400 and "page" in response.json["errors"]


# -- input PostgreSQL refused (500) where SQLite took it ----------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/nodes", {"name": "a\x00b", "aet": "X", "host": "h", "port": 104}),
    ("POST", "/api/v1/worklist", {"patient_id": "P1", "study_type": "C\x00"}),
    ("POST", "/api/v1/worklist/study-types", {"code": "CT", "nodes": ["\x00"]}),
    ("POST", "/api/v1/router/rules", {"name": "r", "actions": [{"type": "PUSH", "node": "\x00"}]}),
    ("PATCH", "/api/v1/settings", {"public_url\x00": ""}),
])  # fmt: skip
def test_a_nul_character_in_a_json_body_is_refused(admin, method, path, body):
    client, headers = admin
    response = client.open(path, method=method, headers=headers, json=body)
    assert response.status_code == 400
    assert "NUL" in response.json["errors"]["_body"][0]


@pytest.mark.parametrize("path", [
    "/api/v1/studies?patient_name=A%00", "/api/v1/audit?actor=%00",
    "/api/v1/worklist?patient_id=%00", "/api/v1/apicrypt/certificates?search=%00",
])  # fmt: skip
def test_a_nul_character_in_a_query_is_refused(admin, path):
    client, headers = admin
    response = client.get(path, headers=headers)
    assert response.status_code == 400 and "NUL" in json.dumps(response.json["errors"])


def test_integers_beyond_the_columns_are_refused(admin):
    client, headers = admin
    storage = client.get("/api/v1/storages", headers=headers).json[0]
    response = client.patch(f"/api/v1/storages/{storage['id']}", headers=headers,
                            json={"min_free_mb": 2**31})  # fmt: skip
    assert response.status_code == 400 and "min_free_mb" in response.json["errors"]
    long_mail = "a" * 250 + "@example.org"  # the column holds 255 characters
    response = client.post("/api/v1/users", headers=headers, json={
        "login": "mail", "profile": "secretary", "password": "a long password",
        "email": long_mail})  # fmt: skip
    assert response.status_code == 400 and "email" in response.json["errors"]


@pytest.mark.parametrize("setting", [
    "password_renewal_days", "session_minutes", "inactivity_minutes", "lock_minutes",
    "reset_link_minutes", "reset_mail_interval_minutes", "study_stable_seconds",
    "max_find_results", "worklist_timeout_hours",
])  # fmt: skip
def test_a_duration_setting_beyond_timedelta_is_refused(admin, setting):
    client, headers = admin
    response = client.patch("/api/v1/settings", headers=headers, json={setting: 10**12})
    assert response.status_code == 400 and setting in response.json["errors"]
    # a password_renewal_days of 10**10 was saved, then every basic-auth request answered 500
    assert client.get("/api/v1/nodes", headers=basic("root")).status_code == 200


def test_json_nested_too_deeply_is_refused(admin):
    client, headers = admin
    response = client.post("/api/v1/nodes", headers={**headers, "Content-Type": "application/json"},
                           data="[" * 100_000)  # fmt: skip
    assert response.status_code == 400 and "deeply" in response.json["errors"]["_body"][0]


# -- timestamps: UTC with an offset -------------------------------------------------------


def offset_utc(value: str) -> datetime:
    assert OFFSET.search(value), f"{value!r} has no offset (RFC 3339 requires one)"
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset().total_seconds() == 0
    return parsed


def test_every_timestamp_of_the_api_is_utc_with_an_offset(admin, pacs, tmp_path):
    client, headers = admin
    study_uid = store_instance(pacs, tmp_path / "dicom")
    client.get("/api/v1/studies", headers=basic("root"))  # a login: last_login is set
    before = datetime.now().astimezone()
    study = client.get("/api/v1/studies", headers=headers).json["studies"][0]
    assert abs((offset_utc(study["last_received"]) - before).total_seconds()) < 60
    detail = client.get(f"/api/v1/studies/{study_uid}", headers=headers).json
    series_uid = detail["series"][0]["series_uid"]
    instances = client.get(f"/api/v1/studies/{study_uid}/series/{series_uid}/instances",
                           headers=headers).json  # fmt: skip
    offset_utc(instances[0]["received_at"])
    users = client.get("/api/v1/users", headers=headers).json
    offset_utc(next(u for u in users if u["login"] == "root")["last_login"])
    offset_utc(client.get("/api/v1/audit", headers=headers).json[0]["at"])
    client.post("/api/v1/purge/run", headers=headers, json={})
    job = client.get("/api/v1/jobs", headers=headers).json[0]
    for key in ("created", "updated", "next_attempt"):
        offset_utc(job[key])
    offset_utc(client.get("/api/v1/purge/plan", headers=headers).json["made_at"])
    client.post("/api/v1/worklist/study-types", headers=headers, json={"code": "CT-HEAD"})
    entry = client.post("/api/v1/worklist", headers=headers,
                        json={"patient_id": "P1", "study_type": "CT-HEAD"}).json  # fmt: skip
    offset_utc(entry["created"])
    offset_utc(entry["updated"])
    offset_utc(entry["steps"][0]["updated"])


def test_apicrypt_timestamps_are_utc_with_an_offset(admin):
    client, headers = admin
    person = TestCA("conformance CA").person("Jean Dupont", "jean.dupont@x.apicrypt.org")
    upload = {"file": (io.BytesIO(person.cert_pem()), "c.pem"),
              "key": (io.BytesIO(person.key_pem()), "k.pem")}  # fmt: skip
    identity = client.post("/api/v1/apicrypt/identity", headers=headers, data=upload)
    assert identity.status_code == 201, identity.json
    offset_utc(identity.json["not_after"])
    offset_utc(identity.json["imported"])
    added = client.post("/api/v1/apicrypt/certificates", headers=headers,
                        data={"file": (io.BytesIO(person.cert_pem()), "c.pem")}).json  # fmt: skip
    offset_utc(added["added"][0]["not_before"])
    listed = client.get("/api/v1/apicrypt/certificates", headers=headers).json
    offset_utc(listed["certificates"][0]["not_after"])


# -- schemathesis over every operation ---------------------------------------------------


@pytest.fixture(scope="module")
def person_pem() -> bytes:
    return TestCA("fuzz CA").person("Anne Martin", "anne.martin@y.apicrypt.org").cert_pem()


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)  # scrypt: once, not for each site


def empty_database(db_url: str) -> None:
    """Delete every row (PostgreSQL: a new database per site took 1.6 s)."""
    if db_url.startswith("sqlite"):
        return  # a new home, a new file
    kept = {m._meta.table_name for m in (SchemaVersion, AppliedMigration)}  # same schema
    with connection():
        # the core's tables and the plugins'
        tables = ", ".join(f'"{name}"' for name in db.get_tables() if name not in kept)
        if db.table_exists(SchemaVersion._meta.table_name):
            db.execute_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


class Site:
    """A fresh installation (database, home, plugins) with one row of each kind and
    an administrator's token: each operation is fuzzed on its own, so that one
    (a profile losing its rights, a setting, a disabled plugin) cannot hide another."""

    def __init__(self, home: Path, db_url: str, person_pem: bytes, password_hash: str) -> None:
        self.pacs = plugin_pacs(home, db_url)
        self.app = web_app(self.pacs)
        with connection():
            root, clerk = (
                User.create(login=login, profile=profile, password_hash=password_hash,
                            password_changed=utcnow(), services="[]")
                for login, profile in (("root", "system administrator"), ("clerk", "secretary"))
            )  # fmt: skip
            self.headers = bearer(new_api_token(root, "fuzz"))
        study_uid = store_instance(self.pacs, home / "dicom")
        self.pacs.archive.folders.flush()  # no flush thread left behind
        self.ids = {"uid": study_uid, "name": "to viewer", "user_id": clerk.id}
        client = self.app.test_client()

        def post(path: str, **kwargs) -> dict:
            response = client.post(path, headers=self.headers, **kwargs)
            assert response.status_code in (201, 202), (path, response.json)
            return response.json

        self.ids["node_id"] = post(
            "/api/v1/nodes",
            json={"name": "viewer", "aet": "VIEWER", "host": "127.0.0.1", "port": 11112},
        )["id"]
        self.ids["profile_id"] = post(
            "/api/v1/profiles", json={"name": "night", "rights": ["view_studies"]}
        )["id"]
        self.ids["storage_id"] = post(
            "/api/v1/storages", json={"name": "spare", "path": str(home / "spare")}
        )["id"]
        self.ids["type_id"] = post(
            "/api/v1/worklist/study-types",
            json={"code": "CT-HEAD", "modality": "CT", "nodes": ["viewer"]},
        )["id"]
        entry = post("/api/v1/worklist", json={"patient_id": "P1", "study_type": "CT-HEAD"})
        self.ids["entry_id"], self.ids["step_id"] = entry["id"], entry["steps"][0]["id"]
        post(
            "/api/v1/router/rules",
            json={"name": "to viewer", "actions": [{"type": "PUSH", "node": "viewer"}]},
        )
        self.ids["job_id"] = post("/api/v1/purge/run", json={"scope": "rules"})["job_id"]
        added = post("/api/v1/apicrypt/certificates",
                     data={"file": (io.BytesIO(person_pem), "c.pem")})  # fmt: skip
        self.ids["cert_id"] = added["added"][0]["id"]
        with connection():
            series = Study.get(Study.study_uid == study_uid).series.get()
            self.ids["series_uid"] = series.series_uid
            assert Job.select().count() == 1

    def path_parameters(self, path: str) -> dict | None:
        """The seeded rows' ids for the parameters of ``path`` (None: it has none)."""
        names = re.findall(r"{(\w+)}", path)
        if not names:
            return None
        values = {name: self.ids.get(name) for name in names}
        if path.startswith("/api/v1/plugins/"):
            values["name"] = "router"
        return {k: v for k, v in values.items() if v is not None} or None

    def close(self) -> None:
        self.pacs.database.close_all()


def fuzz(site: Site, operation, mode: GenerationMode, path_parameters: dict | None) -> None:
    """Up to MAX_EXAMPLES requests, the same ones every run; raises on a failed check."""
    strategy = operation.as_strategy(mode, path_parameters=path_parameters)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], print_blob=False,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=strategy)
    def run(case) -> None:
        case.call_and_validate(app=site.app, headers=site.headers, checks=CHECKS)

    run()


def test_schemathesis_finds_no_server_error_nor_schema_violation(
    tmp_path, db_url, person_pem, password_hash
):
    """Every operation of the document, core and plugins, excluded none: positive and
    negative data, on random ids and on the ids of existing rows."""
    first = Site(tmp_path / "doc", db_url, person_pem, password_hash)
    document = document_of(first.app.test_client())
    first.close()
    schema = schemathesis.openapi.from_dict(document)
    failures, count = [], 0
    for index, result in enumerate(schema.get_all_operations()):
        operation = result.ok()
        count += 1
        empty_database(db_url)
        site = Site(tmp_path / f"op{index}", db_url, person_pem, password_hash)
        try:
            failures += fuzz_operation(site, operation)
        finally:
            site.close()
    assert count >= 60 and not failures, "\n\n".join(failures)


def fuzz_operation(site: Site, operation) -> list[str]:
    """Positive and negative data, free path parameters and the seeded rows' ids."""
    failures = []
    pinned = site.path_parameters(operation.path)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for parameters in (None, pinned) if pinned else (None,):
            label = f"{operation.label} ({mode.value}{', existing rows' if parameters else ''})"
            try:
                fuzz(site, operation, mode, parameters)
            except Unsatisfiable:
                pass  # no negative data for an operation without inputs
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported below
                failures.append(f"{label}: {exc}")
    return failures
