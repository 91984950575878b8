"""Named service filters: criteria combined with AND (InstitutionName, RequestingService,
Modality), a user's filters with OR, on pages, API listings and ZIPs; the filters of
before (a name matching either tag) keep matching the same studies after the upgrade."""

from __future__ import annotations

import json

import pytest

from pacscore.db import connection
from pacscore.models import AppliedMigration, ServiceFilter, User
from tests.webclient import Console, add_user, basic, store_instance, web_app


@pytest.fixture
def pacs(make_pacs):
    return make_pacs()


@pytest.fixture
def app(pacs):
    return web_app(pacs)


@pytest.fixture
def studies(pacs, tmp_path) -> dict[str, str]:
    """Studies named by (institution, requesting service, modality)."""
    made = {
        "A-X-CT": ("CHU A", "CARDIO", "CT"),
        "A-Y-CT": ("CHU A", "NEURO", "CT"),
        "B-X-MR": ("CHU B", "CARDIO", "MR"),
        "a-x-MR": ("chu a", "cardio", "MR"),  # the same service written in lower case
        "X-none-US": ("CARDIO", "", "US"),  # the old filter CARDIO matched it by institution
    }
    return {
        key: store_instance(
            pacs,
            tmp_path / key,
            patient_id=key,
            institution=institution,
            requesting_service=service,
            modality=modality,
        )  # fmt: skip
        for key, (institution, service, modality) in made.items()
    }


def define(name: str, **criteria: str) -> None:
    with connection():
        ServiceFilter.create(name=name, **criteria)


def visible(app, login: str, studies: dict[str, str]) -> list[str]:
    """The studies a user sees, checked alike on the study list, the API and the ZIPs."""
    console = Console(app)
    assert console.login(login).status_code == 302
    page = console.get("/studies/").text
    listed = sorted(key for key, uid in studies.items() if f"/studies/{uid}" in page)
    found = console.client.get("/api/v1/studies", headers=basic(login)).json
    by_api = sorted(key for key, uid in studies.items()
                    if uid in {s["study_uid"] for s in found["studies"]})  # fmt: skip
    assert by_api == listed and found["total"] == len(listed)
    for key, uid in studies.items():
        status = 200 if key in listed else 404
        assert console.get(f"/studies/{uid}").status_code == status
        assert console.get(f"/studies/{uid}/download").status_code == status
        detail = console.client.get(f"/api/v1/studies/{uid}", headers=basic(login))
        assert detail.status_code == status
        zipped = console.client.get(f"/api/v1/studies/{uid}/download", headers=basic(login))
        assert zipped.status_code == status
        if status == 200:
            series = detail.json["series"][0]["series_uid"]
            url = f"/api/v1/studies/{uid}/series/{series}/instances"
            assert len(console.client.get(url, headers=basic(login)).json) == 1
    return listed


def test_criteria_of_a_filter_all_match(app, studies):
    define("A+CARDIO", institution="CHU A", requesting_service="CARDIO")
    add_user("alice", "radiologist", services=["A+CARDIO"])
    # not (A, NEURO) nor (B, CARDIO); case-insensitive on both tags
    assert visible(app, "alice", studies) == ["A-X-CT", "a-x-MR"]


def test_a_modality_filter_and_several_filters_add_up(app, studies):
    define("CT", modality="CT")
    define("B MR", institution="chu b", modality="MR")
    add_user("ct", "radiologist", services=["ct"])  # a filter's name ignores case
    add_user("two", "radiologist", services=["CT", "B MR"])
    assert visible(app, "ct", studies) == ["A-X-CT", "A-Y-CT"]
    assert visible(app, "two", studies) == ["A-X-CT", "A-Y-CT", "B-X-MR"]


def test_old_filters_are_migrated_and_match_what_they_matched(app, pacs, studies):
    add_user("card", "radiologist", services=["CARDIO", "NEURO"])
    # a database from before named filters: users hold names, the step has not run
    with connection():
        ServiceFilter.delete().execute()
        AppliedMigration.delete().where(AppliedMigration.name == "service_filters").execute()
    before = visible(app, "card", studies)
    assert before == ["A-X-CT", "A-Y-CT", "B-X-MR", "X-none-US", "a-x-MR"]

    pacs.prepare()  # what every start-up does

    with connection():
        migrated = {f.name: (f.institution_or_service, f.institution, f.modality)
                    for f in ServiceFilter.select()}  # fmt: skip
    assert migrated == {"CARDIO": ("CARDIO", "", ""), "NEURO": ("NEURO", "", "")}
    assert visible(app, "card", studies) == before
    pacs.prepare()  # once only
    with connection():
        assert ServiceFilter.select().count() == 2


def test_filter_pages_create_edit_and_refuse_deleting_a_held_filter(app, studies):
    add_user("root", "system administrator")
    admin = Console(app)
    admin.login("root")
    assert admin.post("/users/service-filters/new", {"name": "nothing"}).status_code == 200
    response = admin.post(
        "/users/service-filters/new", {"name": "CT A", "institution": "CHU A", "modality": "ct"}
    )
    assert "upper-case letters and digits" in response.text
    response = admin.post(
        "/users/service-filters/new", {"name": "CT A", "institution": "CHU A", "modality": "CT"}
    )
    assert response.status_code == 302
    with connection():
        created = ServiceFilter.get(ServiceFilter.name == "CT A")
    add_user("bob", "radiologist", services=["CT A"])
    assert visible(app, "bob", studies) == ["A-X-CT", "A-Y-CT"]
    form = {"name": "CT A", "institution": "CHU A", "requesting_service": "NEURO",
            "modality": "CT"}  # fmt: skip
    assert admin.post(f"/users/service-filters/{created.id}", form).status_code == 302
    assert visible(app, "bob", studies) == ["A-Y-CT"]
    listing = admin.get("/users/service-filters/").text
    assert "CT A" in listing and "bob" in listing
    admin.post(f"/users/service-filters/{created.id}/delete")
    assert "held by bob" in admin.get("/users/service-filters/").text
    with connection():
        assert ServiceFilter.get_or_none(ServiceFilter.id == created.id) is not None
    # the user form takes the names; a name without a filter is listed apart
    with connection():
        bob = User.get(User.login == "bob")
    admin.post(f"/users/{bob.id}", {"login": "bob", "profile": "radiologist",
                                    "status": "active", "services": "CARDIO"})  # fmt: skip
    listing = admin.get("/users/service-filters/").text
    assert 'id="undefined"' in listing and "cardio" in listing
    assert admin.post(f"/users/service-filters/{created.id}/delete").status_code == 302
    with connection():
        assert ServiceFilter.get_or_none(ServiceFilter.id == created.id) is None
    actions = [e["action"] for e in admin.client.get("/api/v1/audit").json]
    assert {"service_filter_save", "service_filter_delete"} <= set(actions)


def test_api_create_change_and_delete(app, studies):
    add_user("root", "system administrator")
    admin = Console(app)
    admin.login("root")
    url = "/api/v1/service-filters"
    refused = admin.api("POST", url, json={"name": "empty"})
    assert refused.status_code == 400 and refused.json["errors"]["_schema"]
    refused = admin.api("POST", url, json={"name": "a,b", "modality": "CT", "colour": 1})
    assert set(refused.json["errors"]) == {"name", "colour"}
    created = admin.api("POST", url, json={"name": "Cardio A", "institution": "CHU A",
                                           "requesting_service": "CARDIO"})  # fmt: skip
    assert created.status_code == 201, created.json
    item = f"{url}/{created.json['id']}"
    clash = admin.api("POST", url, json={"name": "cardio a", "modality": "CT"})
    assert clash.json["errors"]["name"] == ["a service filter with this name exists"]
    add_user("carol", "radiologist", services=["Cardio A"])
    assert admin.api("GET", item).json["users"] == ["carol"]
    changed = admin.api("PATCH", item, json={"modality": "MR"})
    assert changed.status_code == 200 and changed.json["requesting_service"] == "CARDIO"
    assert visible(app, "carol", studies) == ["a-x-MR"]
    renamed = admin.api("PATCH", item, json={"name": "Other"})
    assert renamed.status_code == 400 and "held by carol" in renamed.json["errors"]["name"][0]
    cleared = admin.api("PATCH", item, json={"institution": "", "requesting_service": "",
                                             "modality": ""})  # fmt: skip
    assert cleared.status_code == 400  # a filter without criteria would match nothing
    assert admin.api("DELETE", item).status_code == 409
    assert [f["name"] for f in admin.api("GET", url).json] == ["Cardio A"]
    with connection():
        User.update(services=json.dumps([])).where(User.login == "carol").execute()
    assert admin.api("DELETE", item).status_code == 204
    assert admin.api("GET", item).status_code == 404
    paths = admin.get("/api/v1/openapi.json").json["paths"]
    assert {"/api/v1/service-filters", "/api/v1/service-filters/{filter_id}"} <= set(paths)
