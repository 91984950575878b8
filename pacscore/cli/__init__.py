"""The ``pacscore`` command line.

``pacscore [--home DIR] COMMAND``; the home defaults to ``$PACSCORE_HOME``,
else ``./pacscore-home``.  Every command exits non-zero with a message on
stderr when it fails.

One module per noun adds its commands (``add_parser(commands)``) and runs them
through the service layer (:mod:`pacscore.services`); installed plugins add
theirs (hook ``cli_commands``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from marshmallow import ValidationError

from pacscore.cli import archive, jobs, nodes, plugins, serve, settings, storage, users, worklist
from pacscore.cli.common import CommandError, invalid_value, open_pacs
from pacscore.config import default_home
from pacscore.db import connection
from pacscore.services import Invalid, ServiceError

# in the order of ``pacscore --help``
NOUNS = (serve, archive, nodes, plugins, settings, storage, jobs, users, worklist)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacscore", description="A plugin-based, extensible PACS core."
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="home folder (default: $PACSCORE_HOME, else ./pacscore-home)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for noun in NOUNS:
        noun.add_parser(commands)
    add_plugin_commands(commands)
    return parser


# -- commands contributed by plugins (hook cli_commands) --------------------------------


def add_plugin_commands(commands, host=None) -> None:
    """Let every installed plugin (or those of ``host``) add subcommands, tagged with
    the plugin's name."""
    from pacscore.plugins import PluginHost

    if host is None:
        host = PluginHost()
        # the home (hence which plugins are disabled) is not known yet; an unimportable
        # plugin is reported by the command itself and by `plugins list`, not here
        logging.disable(logging.CRITICAL)
        try:
            host.load_entry_points()
        finally:
            logging.disable(logging.NOTSET)
    for plugin in host.plugins_implementing("cli_commands"):
        before = set(commands.choices)
        # one plugin at a time, to tag its commands; a failure is logged (EACH)
        host.call_plugin(plugin, "cli_commands", subparsers=commands)
        for name in set(commands.choices) - before:
            commands.choices[name].set_defaults(plugin_command=plugin)


def run_plugin_command(args) -> int:
    pacs = open_pacs(args)
    if pacs.hooks.pm.get_plugin(args.plugin_command) is None:
        raise CommandError(
            f"plugin {args.plugin_command} is disabled or failed to load "
            f"(see 'pacscore plugins list'): '{args.command}' is unavailable"
        )
    with connection():
        return args.func(args, pacs) or 0


# -- running ------------------------------------------------------------------------------


def configure_logging(level: str, log_dir: Path | None = None, name: str = "pacscore.log") -> None:
    from logging.handlers import RotatingFileHandler

    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(
            RotatingFileHandler(log_dir / name, maxBytes=10 * 1024 * 1024, backupCount=5)
        )
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )
    # pynetdicom logs every PDU at INFO: keep its warnings only
    logging.getLogger("pynetdicom").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.home = (args.home or default_home()).absolute()
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        parser.error(f"invalid --log-level {args.log_level}")
    serving = args.command in ("serve", "dicom-listener")
    log_name = "pacscore.log" if args.command != "dicom-listener" else f"dicom-{args.index}.log"
    configure_logging(args.log_level, args.home / "logs" if serving else None, log_name)
    if not serving:
        logging.getLogger().setLevel(
            max(logging.WARNING, logging.getLevelName(args.log_level.upper()))
        )
    try:
        if getattr(args, "plugin_command", None):
            return run_plugin_command(args)
        return args.func(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"error: {invalid_value(exc.messages)}", file=sys.stderr)
        return 1
    except Invalid as exc:
        print(f"error: {invalid_value(exc.errors)}", file=sys.stderr)
        return 1
    except (ServiceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
