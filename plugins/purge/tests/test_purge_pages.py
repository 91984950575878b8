"""The purge plugin's console page and API: the dry run (items, held studies with
their reason, warnings, totals), "run now" with confirmation, CSRF and rights."""

from __future__ import annotations

import json

import pytest
from pacscore_purge import make_plan
from purge_testlib import RULES, configure, purge_pacs, store_files, ten_year_archive

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import Job, Profile, Study, User
from tests.conftest import make_pacs  # noqa: F401 - fixture
from tests.webclient import Console, add_user, web_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def db_url():
    """Pages are thin over make_plan (tested on both databases): SQLite is enough."""
    return "sqlite:///index.db"


class Holder:
    def __init__(self) -> None:
        self.held: set[str] = set()

    @hookimpl
    def retention_holds(self, study_uids):
        return {uid: "pending send to UPSTREAM" for uid in study_uids if uid in self.held}


@pytest.fixture
def archive(make_pacs, tmp_path):  # noqa: F811
    holder = Holder()
    pacs = purge_pacs(make_pacs, holder)
    specs, files = ten_year_archive(tmp_path / "src")
    store_files(pacs, files)
    configure(pacs, rules=RULES + ["XX * 10"])  # an unknown modality: a warning
    holder.held.add(next(s for s in specs if s.expired).study_uid)
    return pacs, specs, holder


def console_for(app, login: str, profile: str) -> Console:
    add_user(login, profile)
    console = Console(app)
    console.login(login)
    return console


def study_count() -> int:
    with connection():
        return Study.select().count()


def test_dry_run_page_lists_items_held_studies_warnings_and_totals(archive):
    pacs, specs, holder = archive
    with connection():
        plan = make_plan(pacs)
    console = console_for(web_app(pacs), "med", "medical administrator")
    page = console.get("/purge/")
    assert page.status_code == 200
    for item in plan.items:
        assert item.series_uid in page.text
    (held,) = plan.held
    assert held.study_uid in page.text and "holder: pending send to UPSTREAM" in page.text
    assert "Warning:" in page.text and "XX" in page.text
    totals = plan.totals
    assert f"Would delete {totals['series']} series in {totals['studies']} studies" in page.text
    assert f"{totals['bytes']} bytes" in page.text
    assert "/plugins/purge/settings" in page.text and 'id="run-now"' in page.text

    size_only = console.get("/purge/?scope=size")  # no threshold: nothing to free
    assert "Would delete 0 series" in size_only.text
    assert console.get("/purge/?scope=everything").status_code == 400

    api = console.api("GET", "/api/v1/purge/plan").json
    assert api["totals"] == totals
    assert [i["series_uid"] for i in api["items"]] == [i.series_uid for i in plan.items]
    assert api["held"][0]["held"] == "holder: pending send to UPSTREAM"
    assert study_count() == len(specs)  # viewing deletes nothing


def test_run_now_asks_confirmation_then_queues_the_job_that_purges(archive):
    pacs, specs, holder = archive
    console = console_for(web_app(pacs), "med", "medical administrator")
    confirm = console.get("/purge/run?scope=rules")
    assert confirm.status_code == 200 and 'name="confirm" value="yes"' in confirm.text
    assert console.post("/purge/run", {"scope": "rules"}).status_code == 200  # not confirmed
    with connection():
        assert Job.select().where(Job.kind == "purge").count() == 0

    done = console.post("/purge/run", {"scope": "rules", "confirm": "yes"})
    assert done.status_code == 302
    with connection():
        job = pacs.jobs.take(["purge"], "test")
        assert json.loads(job.payload) == {"scope": "rules", "trigger": "console"}
        pacs.jobs.run(job)
    expired = {s.study_uid for s in specs if s.expired} - holder.held
    assert study_count() == len(specs) - len(expired)
    assert "queued" in console.get(done.location).text

    queued = console.api("POST", "/api/v1/purge/run", json={"scope": "size"})
    assert queued.status_code == 202 and queued.json["state"] == "pending"
    bad = console.api("POST", "/api/v1/purge/run", json={"scope": "some"})
    assert bad.status_code == 400 and "scope" in bad.json["errors"]


def test_rights_and_csrf(archive):
    pacs, specs, _ = archive
    app = web_app(pacs)
    admin = console_for(app, "root", "system administrator")
    no_token = admin.client.post("/purge/run", data={"scope": "all", "confirm": "yes"})
    assert no_token.status_code == 400

    # a radiologist has neither view_audit nor delete
    reader = console_for(app, "doc", "radiologist")
    account = reader.get("/account").text
    assert 'id="logout"' in account and 'href="/purge/"' not in account
    assert reader.get("/purge/").status_code == 403
    assert reader.api("GET", "/api/v1/purge/plan").status_code == 403
    assert reader.post("/purge/run", {"confirm": "yes"}).status_code == 403
    assert reader.api("POST", "/api/v1/purge/run", json={}).status_code == 403

    # the right to view is not the right to run
    add_user("auditor", "simple user")
    with connection():
        Profile.create(name="auditor", rights='["view_audit"]')
        User.update(profile="auditor").where(User.login == "auditor").execute()
    auditor = Console(app)
    auditor.login("auditor")
    page = auditor.get("/purge/")
    assert page.status_code == 200 and 'id="run-now"' not in page.text
    assert 'href="/purge/">Purge</a>' in page.text  # the header link
    assert auditor.post("/purge/run", {"confirm": "yes"}).status_code == 403

    assert Console(app).get("/purge/").status_code == 302
    with connection():
        assert Job.select().where(Job.kind == "purge").count() == 0
    assert study_count() == len(specs)
