"""What every command shares: its user-facing error and opening the home."""

from __future__ import annotations

import argparse
import json

from pacscore.services import Invalid


class CommandError(Exception):
    """A user-facing failure: printed as ``error: ...`` with exit status 1."""


def open_pacs(args: argparse.Namespace, load_plugins: bool = True):
    """The :class:`pacscore.app.Pacs` of ``--home`` (not a home: :class:`CommandError`)."""
    from pacscore.app import open_pacs

    try:
        return open_pacs(args.home, load_plugins=load_plugins)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc


def invalid_value(errors: object) -> str:
    """The message of input a schema refused (``error: invalid value: {...}``)."""
    return f"invalid value: {json.dumps(errors)}"


def refused(exc: Invalid) -> CommandError:
    return CommandError(invalid_value(exc.errors))
