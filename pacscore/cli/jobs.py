"""``pacscore jobs list|retry|delete``: background jobs."""

from __future__ import annotations

import argparse

from pacscore.cli.common import CommandError, open_pacs
from pacscore.db import connection
from pacscore.jobs import STATES as JOB_STATES
from pacscore.services import Conflict, NotFound
from pacscore.services import jobs as job_service


def add_parser(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser("jobs", help="background jobs").add_subparsers(
        dest="jobs_command", metavar="ACTION", required=True
    )
    p = jobs.add_parser("list", help="list jobs (id, kind, state, attempts, next attempt, error)")
    p.add_argument("--state", choices=JOB_STATES)
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("retry", help="make a job due now (pending, failed or done)")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_jobs_retry)
    p = jobs.add_parser("delete", help="delete a job")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_jobs_delete)


def cmd_jobs_list(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    jobs = pacs.jobs.list(state=args.state)
    if not jobs:
        print("no job" if args.state is None else f"no {args.state} job")
    for job in jobs:
        error = job.last_error.strip().splitlines()[-1][:200] if job.last_error.strip() else "-"
        print(
            f"{job.id}\t{job.kind}\t{job.state}\tattempts={job.attempts}"
            f"\tnext={job.next_attempt:%Y-%m-%d %H:%M:%S}\t{error}"
        )
    return 0


def cmd_jobs_retry(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    with connection():
        try:
            job = job_service.retry(pacs, args.id)
        except NotFound:
            raise CommandError(f"no job with id {args.id}") from None
        except Conflict:
            raise CommandError(f"job {args.id} is running: it cannot be retried now") from None
    print(f"job {args.id} ({job.kind}) will be retried now")
    return 0


def cmd_jobs_delete(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    with connection():
        try:
            job_service.delete(pacs, args.id)
        except NotFound:
            raise CommandError(f"no job with id {args.id}") from None
    print(f"job {args.id} deleted")
    return 0
