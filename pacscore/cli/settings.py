"""``pacscore settings [--set KEY=VALUE ...]``: the core settings."""

from __future__ import annotations

import argparse
import json

from pacscore.cli.common import open_pacs
from pacscore.config import CORE_SETTINGS, coerce_for_schema, parse_assignment
from pacscore.db import connection
from pacscore.services import settings as settings_service


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("settings", help="show or change the core settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_settings)


def cmd_settings(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    with connection():
        if args.set:
            changes = {}
            for assignment in args.set:
                key, raw = parse_assignment(assignment)
                changes[key] = coerce_for_schema(CORE_SETTINGS, key, raw)
            settings_service.update(pacs, changes)
        print(json.dumps(settings_service.core(pacs), indent=2))
    return 0
