"""``pacscore plugins list|enable|disable|configure``."""

from __future__ import annotations

import argparse
import json

from pacscore.cli.common import CommandError, open_pacs
from pacscore.config import coerce_for_schema, parse_assignment
from pacscore.db import connection
from pacscore.services import Invalid, NotFound
from pacscore.services import plugins as plugin_service


def add_parser(commands: argparse._SubParsersAction) -> None:
    plugins = commands.add_parser("plugins", help="installed plugins").add_subparsers(
        dest="plugins_command", metavar="ACTION", required=True
    )
    plugins.add_parser("list", help="list plugins and failures").set_defaults(func=cmd_plugins_list)
    for action, enabled in (("enable", True), ("disable", False)):
        p = plugins.add_parser(action, help=f"{action} a plugin")
        p.add_argument("name")
        p.set_defaults(func=lambda args, e=enabled: _set_plugin_enabled(args, e))
    p = plugins.add_parser("configure", help="show or change a plugin's settings")
    p.add_argument("name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_plugins_configure)


def cmd_plugins_list(args) -> int:
    pacs = open_pacs(args)
    with connection():
        for info in pacs.hooks.list():
            line = f"{info.name}\t{info.version}\t{'enabled' if info.enabled else 'disabled'}"
            line += f"\t{info.state}"
            if info.error:
                line += f": {info.error}"
            print(line)
        for failure in plugin_service.failures(10, loading=False):
            print(
                f"  failure {failure.at:%Y-%m-%d %H:%M:%S} {failure.plugin}.{failure.hook}: "
                f"{failure.error.splitlines()[-1] if failure.error else ''}"
            )
    return 0


def _set_plugin_enabled(args, enabled: bool) -> int:
    pacs = open_pacs(args)
    with connection():
        try:
            info = plugin_service.get(pacs, args.name)
            # a running server follows the stored choice; this process has nothing to switch
            plugin_service.set_enabled(pacs, info, enabled, switch_now=False)
        except (NotFound, Invalid):  # unknown, or built in
            raise CommandError(f"no installed plugin named {args.name!r}") from None
    state = "enabled" if enabled else "disabled"
    print(f"plugin {args.name} {state} (a running server follows within a second)")
    return 0


def cmd_plugins_configure(args) -> int:
    pacs = open_pacs(args)
    try:
        schema = plugin_service.settings_schema(pacs, args.name)
    except NotFound:
        raise CommandError(f"plugin {args.name!r} is not loaded or has no settings") from None
    with connection():
        if args.set:
            changes = {}
            for assignment in args.set:
                key, raw = parse_assignment(assignment)
                changes[key] = coerce_for_schema(schema, key, raw)
            plugin_service.save_settings(pacs, args.name, changes)
        print(json.dumps(schema.dump(pacs.plugin_settings(args.name)), indent=2, default=str))
    return 0
