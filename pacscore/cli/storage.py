"""``pacscore storage list|add|set``: the storage folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from pacscore.cli.common import CommandError, open_pacs
from pacscore.db import connection
from pacscore.services import Taken
from pacscore.services import storages as storage_service


def add_parser(commands: argparse._SubParsersAction) -> None:
    storage = commands.add_parser("storage", help="storage folders").add_subparsers(
        dest="storage_command", metavar="ACTION", required=True
    )
    storage.add_parser("list", help="list storage folders").set_defaults(func=cmd_storage_list)
    p = storage.add_parser("add", help="add a storage folder (used after the existing ones)")
    p.add_argument("name")
    p.add_argument("path", type=Path)
    p.add_argument("--min-free-mb", type=_non_negative, default=2048)
    p.set_defaults(func=cmd_storage_add)
    p = storage.add_parser("set", help="change a storage folder")
    p.add_argument("name")
    p.add_argument("--min-free-mb", type=_non_negative)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--enable", dest="enabled", action="store_const", const=True)
    group.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.set_defaults(func=cmd_storage_set)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def cmd_storage_list(args) -> int:
    from pacscore.storage import MB, free_bytes

    open_pacs(args, load_plugins=False)
    with connection():
        for storage in storage_service.listed():
            try:
                free = f"{free_bytes(Path(storage.path)) // MB} MB free"
            except OSError as exc:
                free = f"unavailable ({exc.strerror})"
            print(
                f"{storage.name}\t{storage.path}\t{'enabled' if storage.enabled else 'disabled'}"
                f"\tlimit {storage.min_free_mb} MB\t{free}"
            )
    return 0


def cmd_storage_add(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    path = args.path.absolute()
    data = {"name": args.name, "path": str(path), "min_free_mb": args.min_free_mb}
    with connection():
        try:
            storage_service.save(pacs, None, data)
        except Taken:
            raise CommandError(f"a storage named {args.name!r} already exists") from None
    print(f"storage {args.name} added: {path}")
    return 0


def cmd_storage_set(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    changes = {}
    if args.min_free_mb is not None:
        changes["min_free_mb"] = args.min_free_mb
    if args.enabled is not None:
        changes["enabled"] = args.enabled
    if not changes:
        raise CommandError("nothing to change: give --min-free-mb, --enable or --disable")
    with connection():
        storage = storage_service.named(args.name)
        storage_service.save(pacs, storage, changes, partial=True)
    print(f"storage {args.name} updated")
    return 0
