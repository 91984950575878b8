"""Two pacscore processes on one PostgreSQL database drain 1000 ``router.send``
jobs (10 rules sending each of 100 instances) to a real storescp: each
instance arrives exactly once per rule, every job is done after one attempt,
and both processes took jobs."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from pacscore_router.sending import queue_send
from pydicom import dcmread
from pydicom.uid import generate_uid
from router_fixtures import DEST_AET, RouterPacs, wait_until

from pacscore.db import connection
from pacscore.jobs import JobWorkers
from pacscore.models import Job
from tests.conftest import PG_ADMIN_URL, _pg_admin
from tests.dicomgen import make_instance

pytestmark = pytest.mark.timeout(180)

RULES, INSTANCES = 10, 100
JOBS = RULES * INSTANCES


@pytest.fixture
def pg_url():
    name = f"pacscore_router_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drain(home: str, db_url: str, ready, go) -> None:
    """A separate process: its own Pacs with the router, two routing threads."""
    router = RouterPacs(Path(home), db_url)
    workers = JobWorkers(router.pacs, poll_seconds=0.2)
    ready.set()
    go.wait(60)
    with connection():
        workers.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with connection():
                if not Job.select().where(Job.state.in_(["pending", "running"])).exists():
                    break
            time.sleep(0.2)
    finally:
        workers.stop()
        router.pacs.database.close_all()


def test_two_processes_drain_1000_sends_exactly_once(storescp, tmp_path, pg_url):
    dest = storescp(extra=("--fork",))
    main = RouterPacs(tmp_path / "home", pg_url)
    main.add_node("dest", DEST_AET, dest.port)
    # RULES rules x INSTANCES instances: one send job per (rule, instance)
    rules = [
        {"name": f"rule{n}", "actions": [{"type": "PUSH", "node": "dest", "per_instance": True}]}
        for n in range(RULES)
    ]
    rules = main.configure(rules=rules, routing_threads=2)["rules"]
    study_uid, series_uid = generate_uid(), generate_uid()
    sop_uids = []
    for n in range(INSTANCES):
        path = make_instance(
            tmp_path / "in", study_uid=study_uid, series_uid=series_uid, instance_number=n
        )
        main.store(path)
        sop_uids.append(path.stem)
    for rule in rules:
        for sop_uid in sop_uids:
            assert queue_send(main.pacs, rule, "dest", study_uid, [sop_uid])
        assert queue_send(main.pacs, rule, "dest", study_uid, sop_uids) is None  # all queued
    main.stop()

    context = multiprocessing.get_context("spawn")
    ready, go = [context.Event(), context.Event()], context.Event()
    processes = [
        context.Process(target=_drain, args=(str(tmp_path / "home"), pg_url, ready[i], go))
        for i in range(2)
    ]
    for process in processes:
        process.start()
    for event in ready:
        assert event.wait(60), "a worker process did not start"
    go.set()
    for process in processes:
        process.join(150)
        assert process.exitcode == 0

    check = RouterPacs(tmp_path / "home", pg_url)
    try:
        jobs = check.jobs()
        assert len(jobs) == JOBS
        assert {(j.state, j.attempts) for j in jobs} == {("done", 1)}
        pids = {j.taken_by.split(":")[1] for j in jobs}
        assert len(pids) == 2, f"only {pids} took jobs"
        assert {d.state for d in check.deliveries()} == {"sent"}
    finally:
        check.stop()
    wait_until(lambda: len(dest.files()) >= JOBS, what="storescp children writing")
    received = Counter(
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dest.files()
    )
    assert len(dest.files()) == JOBS, "sent twice" if len(dest.files()) > JOBS else "lost"
    # each instance once per rule
    assert received == dict.fromkeys(sop_uids, RULES)
