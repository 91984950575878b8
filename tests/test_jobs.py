"""Durable jobs: the queue (``pacs.jobs``), the worker threads, and the CLI.

In process on SQLite and PostgreSQL: each test builds a
:class:`pacscore.app.Pacs` on a fresh home and database (as
``tests/test_outbox.py`` does), registers a plugin with ``job_handlers``, and
either runs :class:`pacscore.jobs.JobWorkers` or calls ``take``/``run``
directly to control the timing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pacscore.app import Pacs
from pacscore.config import Config
from pacscore.db import connection, is_sqlite, utcnow
from pacscore.hookspecs import hookimpl
from pacscore.jobs import DEFAULT_RETRY_SCHEDULE, JobHandler, JobWorkers
from pacscore.models import Job
from tests.conftest import new_pacs

pytestmark = pytest.mark.timeout(60)


class Handlers:
    """A plugin running kind ``work`` (records payloads) and ``broken`` (raises)."""

    def __init__(
        self, concurrency: int = 1, record_dir: Path | None = None, work_seconds: float = 0.0
    ) -> None:
        self.concurrency = concurrency
        self.record_dir = record_dir
        # a job that takes a while: a second worker gets its share even on a busy
        # machine, where an instant job let the first drain the queue alone
        self.work_seconds = work_seconds
        self.seen: list[dict] = []
        self.lock = threading.Lock()

    def work(self, pacs, payload):
        if self.record_dir is not None:
            # one file per worker thread: no interleaved writes
            name = f"{multiprocessing.current_process().pid}-{threading.current_thread().name}"
            with open(self.record_dir / name, "a") as out:
                out.write(f"{payload['n']}\n")
        time.sleep(self.work_seconds)
        with self.lock:
            self.seen.append(payload)

    def broken(self, pacs, payload):
        raise RuntimeError(f"cannot do {payload['n']}")

    @hookimpl
    def job_handlers(self, pacs):
        return {
            "work": JobHandler(self.work, concurrency=self.concurrency),
            "broken": JobHandler(self.broken, retry_schedule=[10, 20]),
        }


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def job(job_id: int) -> Job:
    with connection():
        return Job.get_by_id(job_id)


def close_to(when, expected, slack: float = 5) -> bool:
    return abs((when - expected).total_seconds()) < slack


# -- the queue ---------------------------------------------------------------------


def test_a_job_is_run_by_its_handler_and_done(make_pacs):
    handlers = Handlers()
    pacs = make_pacs(handlers)
    workers = JobWorkers(pacs, poll_seconds=30)  # only enqueue's wake-up can be this fast
    workers.start()
    try:
        time.sleep(0.2)  # the worker is waiting
        job_id = pacs.jobs.enqueue("work", {"n": 1})
        wait_until(lambda: job(job_id).state == "done", timeout=10)
    finally:
        workers.stop()
    assert handlers.seen == [{"n": 1}]
    done = job(job_id)
    assert (done.attempts, done.last_error, done.kind) == (1, "", "work")
    assert json.loads(done.payload) == {"n": 1}
    assert done.taken_by.endswith(":work-0")


def test_enqueue_commits_with_the_callers_transaction(make_pacs):
    pacs = make_pacs(Handlers())
    with connection():
        with pytest.raises(RuntimeError), pacs.database.atomic():
            pacs.jobs.enqueue("work", {"n": 1})
            raise RuntimeError("rolled back")
        assert Job.select().count() == 0
        with pacs.database.atomic():
            job_id = pacs.jobs.enqueue("work", {"n": 2})
    assert job(job_id).state == "pending"


def test_a_delayed_job_is_not_taken_before_it_is_due(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("work", {"n": 1}, delay=3600)
    assert pacs.jobs.take(["work"], "test") is None
    assert close_to(job(job_id).next_attempt, utcnow() + timedelta(seconds=3600))
    assert pacs.jobs.take(["other"], "test") is None


def test_a_failure_is_retried_on_the_schedule_then_failed(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("broken", {"n": 7})

    taken = pacs.jobs.take(["broken"], "test")
    assert taken.id == job_id and taken.state == "running"
    assert job(job_id).state == "running" and job(job_id).taken_by == "test"
    assert pacs.jobs.run(taken) is False
    failed_once = job(job_id)
    assert (failed_once.state, failed_once.attempts) == ("pending", 1)
    assert failed_once.last_error == "RuntimeError: cannot do 7"
    assert close_to(failed_once.next_attempt, utcnow() + timedelta(seconds=10))
    assert pacs.jobs.take(["broken"], "test") is None  # not due yet

    # second attempt: the schedule's second delay
    assert pacs.jobs.retry_now(job_id)
    pacs.jobs.run(pacs.jobs.take(["broken"], "test"))
    assert (job(job_id).state, job(job_id).attempts) == ("pending", 2)
    assert close_to(job(job_id).next_attempt, utcnow() + timedelta(seconds=20))

    # third attempt: the schedule [10, 20] is exhausted
    pacs.jobs.retry_now(job_id)
    pacs.jobs.run(pacs.jobs.take(["broken"], "test"))
    final = job(job_id)
    assert (final.state, final.attempts) == ("failed", 3)
    assert final.last_error == "RuntimeError: cannot do 7"
    assert pacs.jobs.take(["broken"], "test") is None
    assert [j.id for j in pacs.jobs.list(state="failed")] == [job_id]


def test_the_default_schedule_applies_to_a_kind_without_one(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("unhandled", {})
    taken = pacs.jobs.take(["unhandled"], "test")
    assert pacs.jobs.run(taken) is False
    row = job(job_id)
    assert row.state == "pending" and "no handler for job kind 'unhandled'" in row.last_error
    expected = utcnow() + timedelta(seconds=DEFAULT_RETRY_SCHEDULE[0])
    assert close_to(row.next_attempt, expected)
    for _ in DEFAULT_RETRY_SCHEDULE:
        pacs.jobs.retry_now(job_id)
        pacs.jobs.fail(pacs.jobs.take(["unhandled"], "test"), "still nothing")
    assert (job(job_id).state, job(job_id).attempts) == ("failed", 5)


def test_retry_now_makes_a_job_due_and_refuses_a_running_one(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("work", {"n": 1}, delay=3600)
    assert pacs.jobs.retry_now(job_id)
    row = job(job_id)
    assert row.state == "pending" and row.next_attempt <= utcnow()
    taken = pacs.jobs.take(["work"], "test")
    assert taken.id == job_id
    assert not pacs.jobs.retry_now(job_id)  # running: would run twice
    assert not pacs.jobs.retry_now(999999)
    pacs.jobs.run(taken)
    assert job(job_id).state == "done"
    assert pacs.jobs.retry_now(job_id)  # done jobs can be run again on request
    assert pacs.jobs.take(["work"], "test").id == job_id


def test_delete(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("work", {"n": 1})
    assert pacs.jobs.delete(job_id)
    assert not pacs.jobs.delete(job_id)
    assert pacs.jobs.list() == []


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_job_left_running_by_a_dead_local_process_is_taken_again(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("work", {"n": 1})
    other_id = pacs.jobs.enqueue("work", {"n": 2}, delay=3600)
    alive_id = pacs.jobs.enqueue("work", {"n": 3})
    host = socket.gethostname()
    assert pacs.jobs.take(["work"], f"{host}:{dead_pid()}:work-0").id == job_id
    # a live worker of this host, and one of another host (within its lease)
    assert pacs.jobs.take(["work"], f"{host}:{os.getpid()}:work-0").id == alive_id
    # the process dies here; the next start:
    restarted = make_pacs(Handlers())
    assert restarted.jobs.requeue_orphans() == 1
    assert job(job_id).state == "pending"
    assert job(other_id).state == "pending"
    assert job(alive_id).state == "running"
    again = restarted.jobs.take(["work"], "new-host:1")
    assert again.id == job_id and again.attempts == 2
    assert restarted.jobs.run(again)
    assert job(job_id).state == "done"


def test_a_remote_worker_keeps_its_job_while_it_renews_the_lease(make_pacs):
    pacs = make_pacs(Handlers())
    job_id = pacs.jobs.enqueue("work", {"n": 1})
    assert pacs.jobs.take(["work"], "other-host:42:work-0").id == job_id
    assert pacs.jobs.requeue_orphans(lease_seconds=60) == 0  # another host: leased
    time.sleep(1.1)
    assert pacs.jobs.renew("other-host:42:") == 1
    assert pacs.jobs.requeue_orphans(lease_seconds=1) == 0  # just renewed
    time.sleep(1.1)
    assert pacs.jobs.requeue_orphans(lease_seconds=1) == 1  # that host stopped renewing
    assert job(job_id).state == "pending"


def test_a_broken_job_handlers_plugin_is_recorded(make_pacs):
    class NotAHandler:
        @hookimpl
        def job_handlers(self):
            return {"work": lambda pacs, payload: None}

    pacs = make_pacs(Handlers(), NotAHandler())
    # "mail" and "send_study" are the core's built-in kinds
    assert sorted(pacs.jobs.collect_handlers()) == ["broken", "mail", "send_study", "work"]
    assert [(f.plugin, f.hook) for f in pacs.hooks.failures] == [("notahandler", "job_handlers")]


# -- concurrency: each job taken exactly once ----------------------------------------------

JOBS = 300
WORK_SECONDS = 0.005


def _drain_in_process(home: str, db_url: str, record_dir: str, ready, go) -> None:
    """A separate process: its own Pacs on the same database, two worker threads."""
    handlers = Handlers(concurrency=2, record_dir=Path(record_dir), work_seconds=WORK_SECONDS)
    pacs = new_pacs(Path(home), db_url, handlers)
    workers = JobWorkers(pacs, poll_seconds=0.1)
    ready.set()
    go.wait(30)
    workers.start()
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            with connection():
                if not Job.select().where(Job.state == "pending").exists():
                    break
            time.sleep(0.1)
    finally:
        workers.stop()
        pacs.database.close_all()


def recorded(record_dir: Path) -> list[int]:
    return [int(line) for path in record_dir.iterdir() for line in path.read_text().split()]


def test_concurrent_workers_take_each_job_exactly_once(make_pacs, tmp_path, db_url):
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    pacs = make_pacs(Handlers(concurrency=2, record_dir=record_dir, work_seconds=WORK_SECONDS))
    with connection(), pacs.database.atomic():
        for n in range(JOBS):
            pacs.jobs.enqueue("work", {"n": n})

    if is_sqlite():
        # two threads of one process
        workers = JobWorkers(pacs, poll_seconds=0.1)
        workers.start()
        try:
            wait_until(lambda: len(pacs.jobs.list(state="done")) == JOBS, timeout=45)
        finally:
            workers.stop()
        threads = {p.name for p in record_dir.iterdir()}
        assert len(threads) == 2, f"only {threads} took jobs"
    else:
        # two processes, each with its own Pacs and two threads
        context = multiprocessing.get_context("spawn")
        ready = [context.Event(), context.Event()]
        go = context.Event()
        processes = [
            context.Process(
                target=_drain_in_process,
                args=(str(tmp_path / "home"), db_url, str(record_dir), ready[i], go),
            )
            for i in range(2)
        ]
        for process in processes:
            process.start()
        for event in ready:
            assert event.wait(30), "a worker process did not start"
        go.set()
        for process in processes:
            process.join(50)
            assert process.exitcode == 0
        pids = {p.name.split("-", 1)[0] for p in record_dir.iterdir()}
        assert len(pids) == 2, f"only {pids} took jobs"

    numbers = recorded(record_dir)
    assert len(numbers) == JOBS, "a job was run twice" if len(numbers) > JOBS else "missed"
    assert sorted(numbers) == list(range(JOBS))
    with connection():
        assert Job.select().where(Job.state != "done").count() == 0
        assert {j.attempts for j in Job.select()} == {1}


# -- CLI -------------------------------------------------------------------------------


def test_cli_jobs_list_retry_and_delete(pacs_home):
    pacs = Pacs(Config.load(pacs_home.home))
    try:
        pacs.prepare()
        done_id = pacs.jobs.enqueue("mail", {"to": "a@b"})
        pacs.jobs.complete(pacs.jobs.take(["mail"], "test"))
        failing_id = pacs.jobs.enqueue("forward", {"study": "1.2.3"})
        pacs.jobs.fail(pacs.jobs.take(["forward"], "test"), "Traceback...\nOSError: peer down")
    finally:
        pacs.database.close_all()

    lines = pacs_home.cli("jobs", "list").stdout.splitlines()
    assert len(lines) == 2
    fields = lines[1].split("\t")
    assert fields[:4] == [str(failing_id), "forward", "pending", "attempts=1"]
    assert fields[4].startswith("next=") and fields[5] == "OSError: peer down"
    assert lines[0].split("\t")[:3] == [str(done_id), "mail", "done"]
    only_done = pacs_home.cli("jobs", "list", "--state", "done").stdout.splitlines()
    assert [line.split("\t")[0] for line in only_done] == [str(done_id)]
    assert pacs_home.cli("jobs", "list", "--state", "failed").stdout.strip() == "no failed job"

    result = pacs_home.cli("jobs", "retry", str(failing_id))
    assert f"job {failing_id} (forward) will be retried now" in result.stdout
    pacs = Pacs(Config.load(pacs_home.home))
    try:
        row = pacs.jobs.get(failing_id)
        assert row.state == "pending" and row.next_attempt <= utcnow()
    finally:
        pacs.database.close_all()

    result = pacs_home.cli("jobs", "retry", "424242", check=False)
    assert result.returncode == 1 and "no job with id 424242" in result.stderr
    pacs_home.cli("jobs", "delete", str(done_id))
    result = pacs_home.cli("jobs", "delete", str(done_id), check=False)
    assert result.returncode == 1 and f"no job with id {done_id}" in result.stderr
    lines = pacs_home.cli("jobs", "list").stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(failing_id)]
