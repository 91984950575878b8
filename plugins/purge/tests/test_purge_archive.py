"""Purging an in-process archive (SQLite and PostgreSQL): rules, dry run,
holds, on_delete, audit, last-reception dates, the schedule and the job."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from pacscore_purge import make_plan, run_purge
from pacscore_purge.schedule import tick
from purge_testlib import RULES, configure, purge_pacs, store_files, ten_year_archive

from pacscore import hookimpl
from pacscore.db import connection, utcnow
from pacscore.importer import check_index
from pacscore.models import AuditEvent, Instance, Job, Series, Study
from tests.conftest import db_url, make_pacs  # noqa: F401 - fixtures


class Recorder:
    def __init__(self) -> None:
        self.deleted = []

    @hookimpl
    def on_delete(self, instance):
        self.deleted.append((instance.study_uid, instance.reason))


class Holder:
    def __init__(self, held: set[str], fail: bool = False) -> None:
        self.held, self.fail, self.asked = held, fail, []

    @hookimpl
    def retention_holds(self, study_uids):
        self.asked += study_uids
        if self.fail:
            raise RuntimeError("router database unreachable")
        return {uid: "pending send to UPSTREAM" for uid in study_uids if uid in self.held}


def remaining_studies() -> set[str]:
    with connection():
        return {s.study_uid for s in Study.select(Study.study_uid)}


@pytest.fixture
def archive(make_pacs, tmp_path):  # noqa: F811
    def build(*plugins):
        pacs = purge_pacs(make_pacs, *plugins)
        specs, files = ten_year_archive(tmp_path / "src")
        store_files(pacs, files)
        configure(pacs, rules=RULES)
        return pacs, specs

    return build


def test_rules_delete_exactly_the_expired_studies_and_the_dry_run_said_so(archive):
    recorder = Recorder()
    pacs, specs = archive(recorder)
    expired = {s.study_uid for s in specs if s.expired}
    assert 0 < len(expired) < len(specs)
    with connection():
        plan = make_plan(pacs)
    assert {i.study_uid for i in plan.items} == expired
    assert remaining_studies() == {s.study_uid for s in specs}  # a dry run deletes nothing

    with connection():
        report = run_purge(pacs)
    assert [i.series_uid for i in report.deleted] == [
        i.series_uid for i in sorted(plan.items, key=lambda i: i.reason)
    ]
    assert report.totals == plan.totals
    assert remaining_studies() == {s.study_uid for s in specs} - expired
    # DX Chest 0: even the ten-year-old chest radiographs stay
    kept_dx = [s for s in specs if s.modality == "DX" and "CH" in s.description.upper()]
    assert max(s.age for s in kept_dx) == 3300
    assert {s.study_uid for s in kept_dx} <= remaining_studies()
    # and a second run finds nothing more; no row without file, no file without row
    with connection():
        assert make_plan(pacs).items == []
    assert check_index(pacs).consistent


def test_each_deletion_fires_on_delete_and_is_audited_with_its_rule(archive):
    recorder = Recorder()
    pacs, specs = archive(recorder)
    mammo = next(s for s in specs if s.modality == "MG" and s.age == 2000)
    with connection():
        report = run_purge(pacs)
        while pacs.outbox.drain():
            pass
        events = list(AuditEvent.select().where(AuditEvent.action == "delete"))
    assert (mammo.study_uid, "purge rule MG * 1825") in recorder.deleted
    assert {uid for uid, _ in recorder.deleted} == {i.study_uid for i in report.deleted}
    audited = {e.target: e for e in events}
    assert set(audited) == {i.study_uid for i in report.deleted}
    event = audited[mammo.study_uid]
    details = json.loads(event.details)
    assert event.actor == "system:purge"
    assert details["rule"] == "rule MG * 1825" and details["instances"] == 1
    assert details["bytes"] == next(i.bytes for i in report.deleted if i.study_uid == event.target)
    assert sum(json.loads(e.details)["bytes"] for e in events) == report.bytes > 0


def test_a_study_held_by_a_plugin_stays_and_the_dry_run_shows_why(archive):
    holder = Holder(set())
    pacs, specs = archive(holder)
    victim = next(s for s in specs if s.expired)
    holder.held.add(victim.study_uid)
    with connection():
        plan = make_plan(pacs)
        report = run_purge(pacs)
    assert [(i.study_uid, i.held) for i in plan.held] == [
        (victim.study_uid, "holder: pending send to UPSTREAM")
    ]
    assert victim.study_uid not in {i.study_uid for i in plan.items}
    assert victim.study_uid in remaining_studies()
    assert [i.study_uid for i in report.held] == [victim.study_uid]
    assert {s.study_uid for s in specs if s.expired} - remaining_studies() == (
        {s.study_uid for s in specs if s.expired} - {victim.study_uid}
    )


def test_purge_undelivered_setting_does_not_ask_the_holds(archive):
    holder = Holder(set())
    pacs, specs = archive(holder)
    holder.held = {s.study_uid for s in specs}
    configure(pacs, purge_undelivered=True)
    with connection():
        run_purge(pacs)
    assert holder.asked == []
    assert remaining_studies() == {s.study_uid for s in specs if not s.expired}


def test_a_failing_hold_keeps_everything(archive):
    pacs, specs = archive(Holder(set(), fail=True))
    with connection():
        report = run_purge(pacs)
    assert report.deleted == [] and len(report.held) == sum(s.expired for s in specs)
    assert remaining_studies() == {s.study_uid for s in specs}
    assert any(f.hook == "retention_holds" for f in pacs.hooks.failures)


def test_age_from_the_last_reception_date(archive):
    pacs, specs = archive()
    configure(pacs, date_source="last_received")
    with connection():
        assert make_plan(pacs).items == []  # everything was received today
        old = [s for s in specs if s.modality == "CT"][:3]
        Study.update(last_received=datetime.now() - timedelta(days=2000)).where(
            Study.study_uid.in_([s.study_uid for s in old])
        ).execute()
        report = run_purge(pacs)
    assert {i.study_uid for i in report.deleted} == {s.study_uid for s in old}


def test_the_schedule_enqueues_one_job_a_day_and_the_job_purges(archive):
    pacs, specs = archive()
    configure(pacs, schedule_time="01:30")
    # yesterday: a job is created at the real time, which must come after the simulated
    # 02:00 run (today's midnight failed the test between 00:00 and 01:30)
    today = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    day = today - timedelta(days=1)
    with connection():
        assert tick(pacs, now_local=day + timedelta(hours=1)) is None  # not yet
        job_id = tick(pacs, now_local=day + timedelta(hours=2))
        assert job_id is not None
        assert tick(pacs, now_local=day + timedelta(hours=3)) is None  # once a day
        job = pacs.jobs.take(["purge"], "test-worker")
        assert job.id == job_id and pacs.jobs.run(job)
        assert Job.get_by_id(job_id).state == "done"
    assert remaining_studies() == {s.study_uid for s in specs if not s.expired}
    with connection():
        Job.update(created=datetime(2000, 1, 1)).execute()  # the run of an earlier day
        assert tick(pacs, now_local=day + timedelta(hours=2)) is not None


def test_an_instance_received_after_the_plan_is_not_deleted(archive):
    pacs, specs = archive()
    victim = next(s for s in specs if s.expired)
    with connection():
        late = Instance.select(Instance.id).join(Series).join(Study)
        late = late.where(Study.study_uid == victim.study_uid)
        # as if it arrived while the purge ran: after the plan's clock
        Instance.update(received_at=utcnow() + timedelta(hours=1)).where(
            Instance.id.in_(late)
        ).execute()
        report = run_purge(pacs)
        kept = Study.get(Study.study_uid == victim.study_uid)
    assert victim.study_uid not in {i.study_uid for i in report.deleted}
    assert kept.num_instances == 1
    assert check_index(pacs).consistent
