"""``pacscore worklist list``: Modality Worklist steps."""

from __future__ import annotations

import argparse

from pacscore.cli.common import CommandError, open_pacs


def add_parser(commands: argparse._SubParsersAction) -> None:
    worklist = commands.add_parser("worklist", help="Modality Worklist").add_subparsers(
        dest="worklist_command", metavar="ACTION", required=True
    )
    p = worklist.add_parser(
        "list",
        help="list steps (entry id, status, start, modality, station, accession, patient, "
        "description)",
    )
    p.add_argument("--status", help="only steps in this status (e.g. SCHEDULED)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many entries")
    p.set_defaults(func=cmd_worklist_list)


def cmd_worklist_list(args) -> int:
    from pacscore.worklist import STATUSES

    status = args.status.upper() if args.status else None
    if status and status not in STATUSES:
        raise CommandError(f"unknown status {args.status!r}; choose from {', '.join(STATUSES)}")
    pacs = open_pacs(args, load_plugins=False)
    entries = pacs.worklist.search(limit=args.limit, status=status or list(STATUSES))
    if not entries:
        print("no worklist entry" if status is None else f"no {status} step")
    for entry in entries:
        for step in entry["steps"]:
            if status and step["status"] != status:
                continue
            print(
                f"{entry['id']}\t{step['status']}\t{step['start_date']} {step['start_time']}\t"
                f"{step['modality']}\t{step['station_aet'] or '-'}\t{entry['accession_number']}\t"
                f"{entry['patient_id']}\t{entry['patient_name']}\t"
                f"{step['description'] or entry['procedure_description']}"
            )
    return 0
