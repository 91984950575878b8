"""Durable background jobs: stored in the database, retried on a schedule.

Producers call :meth:`Jobs.enqueue` (inside their own transaction if they
have one, so that the job and the data commit together).  Plugins provide the
code that runs a kind of job through the ``job_handlers`` hook.  In ``pacscore
serve``, :class:`JobWorkers` runs one thread per unit of concurrency of each
kind; a thread takes one due job of its kind at a time, atomically (``SELECT
... FOR UPDATE SKIP LOCKED`` on PostgreSQL, an IMMEDIATE transaction on
SQLite), so that two workers, in one process or in several, never run the
same job.  A failed job is retried after the delays of its kind's retry
schedule, then marked ``failed``.  A running job is leased: its worker's
process renews it every 30 s, and a job whose lease expired (two minutes) or
whose process of this host has died is taken again (:meth:`Jobs.requeue_orphans`),
so several servers may share one database.  Handlers must be idempotent.  A
handler that knows retrying cannot help (a mail server refusing a recipient
for good, a missing certificate) raises
:class:`PermanentJobError`: the job is ``failed`` at once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pacscore.db import connection, is_sqlite, utcnow, write_transaction
from pacscore.models import Job

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)

# seconds to wait after the 1st, 2nd, ... failure; failed after the last one
DEFAULT_RETRY_SCHEDULE = [3600, 86400, 172800, 604800]
# a running job whose worker has not renewed it for this long is taken again
LEASE_SECONDS = 120

MAX_ERROR_CHARS = 4000


class PermanentJobError(Exception):
    """Raised by a job handler when retrying cannot succeed: the job is marked
    ``failed`` at once, with this error as ``last_error``, instead of being
    retried on its kind's schedule.  ``pacscore jobs retry ID`` still gives
    it another attempt once an administrator has fixed the cause."""


class Postpone(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a handler to run the job again later without failing it.

    The job goes back to ``pending`` due in ``seconds``; the attempt is not
    counted against the retry schedule and ``reason`` is kept as its last
    error (for instance "outside the routing window until 20:00").
    """

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason)
        self.seconds = max(0.0, seconds)
        self.reason = reason


@dataclass
class JobHandler:
    """How to run the jobs of one kind.

    ``func(pacs, payload)`` does the work (``payload`` is the dict given to
    ``enqueue``) and raises to signal a failure.  ``concurrency`` is the number
    of worker threads for the kind in one server; ``retry_schedule`` the
    delays in seconds before each retry (``None``: ``DEFAULT_RETRY_SCHEDULE``).
    """

    func: Callable[[Pacs, dict[str, Any]], None]
    concurrency: int = 1
    retry_schedule: list[int] | None = None
    plugin: str = ""


def _dead_local(taken_by: str) -> bool:
    """Whether ``host:pid[:...]`` names a process of this host that no longer exists."""
    host, _, rest = taken_by.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def worker_name(suffix: str = "") -> str:
    """``host:pid[:suffix]``: who took a job, shown by ``pacscore jobs list``."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}:{suffix}" if suffix else name


class Jobs:
    """The job queue of one :class:`pacscore.app.Pacs` (``pacs.jobs``)."""

    def __init__(self, pacs: Pacs) -> None:
        self.pacs = pacs
        self._handlers: dict[str, JobHandler] | None = None
        # workers waiting for work; a generation counter so no wake-up is lost
        self._cond = threading.Condition()
        self._generation = 0
        self._running = threading.local()

    # -- handlers ------------------------------------------------------------

    def collect_handlers(self) -> dict[str, JobHandler]:
        """(Re)collect the handlers of every plugin's ``job_handlers``."""
        handlers: dict[str, JobHandler] = {}
        for plugin, contributed in self.pacs.hooks.relay.job_handlers(pacs=self.pacs):
            for kind, handler in dict(contributed).items():
                if not isinstance(handler, JobHandler):
                    error = TypeError(f"handler of job kind {kind!r} is not a JobHandler")
                    self.pacs.hooks.record_failure(plugin, "job_handlers", error)
                    continue
                if kind in handlers:
                    error = ValueError(
                        f"job kind {kind!r} is already handled by {handlers[kind].plugin}"
                    )
                    self.pacs.hooks.record_failure(plugin, "job_handlers", error)
                    continue
                handler.plugin = handler.plugin or plugin
                handlers[kind] = handler
        self._handlers = handlers
        return handlers

    def handlers(self) -> dict[str, JobHandler]:
        if self._handlers is None:
            return self.collect_handlers()
        return self._handlers

    def retry_schedule(self, kind: str) -> list[int]:
        handler = self.handlers().get(kind)
        if handler is None or handler.retry_schedule is None:
            return DEFAULT_RETRY_SCHEDULE
        return handler.retry_schedule

    # -- the queue -------------------------------------------------------------

    def enqueue(self, kind: str, payload: dict[str, Any] | None = None, delay: float = 0) -> int:
        """Record a job due in ``delay`` seconds; return its id.

        Call it inside the caller's transaction to commit the job with the
        data it is about.  ``payload`` must be JSON-serialisable.
        """
        text = json.dumps(payload or {})
        now = utcnow()
        with connection():
            job_id = Job.insert(
                kind=kind,
                payload=text,
                state=PENDING,
                next_attempt=now + timedelta(seconds=delay),
                created=now,
                updated=now,
            ).execute()
        if not delay:
            self.wake()
        return job_id

    def take(self, kinds: Iterable[str], worker: str) -> Job | None:
        """Atomically take the oldest due pending job of ``kinds`` and mark it running.

        Returns the job (``attempts`` already counts this attempt), or ``None``
        if nothing is due.  Safe between threads and processes.
        """
        kinds = list(kinds)
        if not kinds:
            return None
        now = utcnow()
        with connection(), write_transaction():
            query = (
                Job.select()
                .where((Job.state == PENDING) & (Job.next_attempt <= now) & Job.kind.in_(kinds))
                .order_by(Job.next_attempt, Job.id)
                .limit(1)
            )
            if not is_sqlite():
                # another process's worker skips the row we lock instead of waiting
                query = query.for_update("FOR UPDATE SKIP LOCKED")
            job = query.first()
            if job is None:
                return None
            job.state = RUNNING
            job.attempts += 1
            job.taken_by = worker[:255]
            job.updated = now
            Job.update(
                state=RUNNING, attempts=Job.attempts + 1, taken_by=job.taken_by, updated=now
            ).where(Job.id == job.id).execute()
        return job

    def complete(self, job: Job) -> None:
        """Mark a job taken with :meth:`take` as done."""
        with connection():
            Job.update(state=DONE, last_error="", updated=utcnow()).where(
                (Job.id == job.id) & (Job.state == RUNNING)
            ).execute()
        job.state = DONE

    def fail(self, job: Job, error: str, permanent: bool = False) -> None:
        """Record a failed attempt: pending again after the schedule's next delay,
        or ``failed`` once the schedule is exhausted (at once if ``permanent``)."""
        schedule = self.retry_schedule(job.kind)
        attempts = max(job.attempts, 1)
        now = utcnow()
        changes: dict[Any, Any] = {Job.last_error: error[-MAX_ERROR_CHARS:], Job.updated: now}
        if permanent or attempts > len(schedule):
            changes[Job.state] = FAILED
        else:
            changes[Job.state] = PENDING
            changes[Job.next_attempt] = now + timedelta(seconds=schedule[attempts - 1])
        with connection():
            Job.update(changes).where((Job.id == job.id) & (Job.state == RUNNING)).execute()
        job.state = changes[Job.state]
        job.last_error = changes[Job.last_error]
        job.next_attempt = changes.get(Job.next_attempt, job.next_attempt)

    def postpone(self, job: Job, seconds: float, reason: str = "") -> None:
        """Put a taken job back to pending, due in ``seconds``, without counting the attempt."""
        now = utcnow()
        due = now + timedelta(seconds=seconds)
        with connection():
            Job.update(
                state=PENDING,
                next_attempt=due,
                attempts=Job.attempts - 1,
                last_error=reason[-MAX_ERROR_CHARS:],
                updated=now,
            ).where((Job.id == job.id) & (Job.state == RUNNING)).execute()
        job.state, job.next_attempt, job.attempts = PENDING, due, job.attempts - 1

    def retry_now(self, job_id: int) -> bool:
        """Make a pending, failed or done job due now.

        Returns ``False`` if there is no such job or it is running.  The
        attempts already made still count against the retry schedule.
        """
        now = utcnow()
        with connection():
            changed = (
                Job.update(state=PENDING, next_attempt=now, updated=now)
                .where((Job.id == job_id) & (Job.state != RUNNING))
                .execute()
            )
        if changed:
            self.wake()
        return bool(changed)

    def delete(self, job_id: int) -> bool:
        """Delete a job whatever its state; ``False`` if there is no such job."""
        with connection():
            return bool(Job.delete().where(Job.id == job_id).execute())

    def requeue_orphans(self, lease_seconds: float = LEASE_SECONDS) -> int:
        """Make pending again the running jobs whose worker is gone; return how many.

        A job is orphaned when it was taken by a process of this host that no
        longer exists (found at once, at server start), or when its worker
        has not renewed it (:meth:`renew`) for ``lease_seconds``: a worker on
        another host that died, or a host renamed.  Several servers may share
        a database: a live worker's jobs are never taken from it.  The
        interrupted attempt still counts.
        """
        now = utcnow()
        with connection():
            running = Job.select(Job.id, Job.taken_by, Job.updated).where(Job.state == RUNNING)
            stale = now - timedelta(seconds=lease_seconds)
            orphans = [j.id for j in running if j.updated < stale or _dead_local(j.taken_by)]
            count = 0
            if orphans:
                count = (
                    Job.update(state=PENDING, next_attempt=now, updated=now)
                    .where(Job.id.in_(orphans), Job.state == RUNNING)
                    .execute()
                )
        if count:
            log.warning("%d job(s) left running by a stopped process were requeued", count)
            self.wake()
        return count

    def renew(self, worker_prefix: str) -> int:
        """Renew the lease of the running jobs of the workers named ``worker_prefix*``."""
        with connection():
            return (
                Job.update(updated=utcnow())
                .where(Job.state == RUNNING, Job.taken_by.startswith(worker_prefix))
                .execute()
            )

    def get(self, job_id: int) -> Job | None:
        with connection():
            return Job.get_or_none(Job.id == job_id)

    def list(self, state: str | None = None) -> list[Job]:
        """Jobs by id, optionally of one state."""
        with connection():
            query = Job.select().order_by(Job.id)
            if state is not None:
                query = query.where(Job.state == state)
            return list(query)

    # -- running ----------------------------------------------------------------

    def current(self) -> Job | None:
        """The job the calling thread is running (inside a handler), else ``None``.

        A handler uses it to find the work recorded for its own job (its id),
        for instance rows written with the id ``enqueue`` returned.
        """
        return getattr(self._running, "job", None)

    def run(self, job: Job, handler: JobHandler | None = None) -> bool:
        """Run a taken job with its handler, then complete or fail it; ``True`` if done."""
        handler = handler or self.handlers().get(job.kind)
        self._running.job = job
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            with connection():
                handler.func(self.pacs, json.loads(job.payload))
        except Postpone as later:
            log.info("job %d (%s) postponed: %s", job.id, job.kind, later.reason)
            self.postpone(job, later.seconds, later.reason)
            return False
        except Exception as exc:  # noqa: BLE001 - a job failure is the handler's
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            permanent = isinstance(exc, PermanentJobError)
            log.warning(
                "job %d (%s) failed%s, attempt %d: %s",
                job.id,
                job.kind,
                " for good" if permanent else "",
                job.attempts,
                detail,
            )
            self.fail(job, detail, permanent=permanent)
            return False
        finally:
            self._running.job = None
        self.complete(job)
        return True

    def wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wait(self, generation: int, timeout: float) -> None:
        """Wait until :meth:`wake` after ``generation`` was read, or ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation, timeout)


class JobWorkers:
    """The worker threads: ``concurrency`` threads per handled kind."""

    POLL_SECONDS = 1.0

    def __init__(self, pacs: Pacs, poll_seconds: float | None = None) -> None:
        self.pacs = pacs
        self.poll_seconds = self.POLL_SECONDS if poll_seconds is None else poll_seconds
        self._stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat, name="pacscore-job-lease", daemon=True)
        heartbeat.start()
        self.threads.append(heartbeat)
        handlers = self.pacs.jobs.collect_handlers()
        for kind, handler in sorted(handlers.items()):
            for number in range(max(1, handler.concurrency)):
                thread = threading.Thread(
                    target=self._loop,
                    args=(kind, handler, worker_name(f"{kind}-{number}")),
                    name=f"pacscore-job-{kind}-{number}",
                    daemon=True,
                )
                thread.start()
                self.threads.append(thread)
        log.info("job workers: %d thread(s) for %d kind(s)", len(self.threads), len(handlers))

    def stop(self, timeout: float = 30) -> None:
        """Stop taking jobs and wait for the running ones to finish."""
        self._stop_event.set()
        self.pacs.jobs.wake()
        for thread in self.threads:
            thread.join(timeout=timeout)
        self.threads = []

    def _heartbeat(self) -> None:
        """Renew this process's leases; requeue other workers' expired ones."""
        jobs = self.pacs.jobs
        while not self._stop_event.wait(LEASE_SECONDS / 4):
            try:
                jobs.renew(worker_name() + ":")
                jobs.requeue_orphans()
            except Exception:  # noqa: BLE001 - retried at the next beat
                log.exception("renewing job leases failed")

    def _loop(self, kind: str, handler: JobHandler, worker: str) -> None:
        jobs = self.pacs.jobs
        while not self._stop_event.is_set():
            generation = jobs.generation()
            try:
                job = jobs.take([kind], worker)
                if job is not None:
                    jobs.run(job, handler)
                    continue
            except Exception:  # a worker must outlive a database hiccup
                log.exception("job worker %s iteration failed", worker)
                self._stop_event.wait(self.poll_seconds)
                continue
            jobs.wait(generation, self.poll_seconds)
