"""``pacscore import`` and ``pacscore reindex [--check]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pacscore.cli.common import CommandError, open_pacs


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("import", help="import DICOM files and folders into the archive")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("reindex", help="rebuild the index from the storage folders")
    p.add_argument("--check", action="store_true", help="only report inconsistencies (exit 1)")
    p.set_defaults(func=cmd_reindex)


def cmd_import(args) -> int:
    from pacscore.importer import import_paths

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise CommandError(f"no such file or folder: {', '.join(missing)}")
    pacs = open_pacs(args)
    report = import_paths(pacs, args.paths, progress=not args.quiet)
    print(f"imported: {report.imported}")
    print(f"duplicates: {report.duplicates}")
    print(f"rejected: {len(report.rejected)}")
    for path, reason in report.rejected:
        print(f"  {path}: {reason}")
    return 0


def cmd_reindex(args) -> int:
    from pacscore.importer import check_index, reindex

    pacs = open_pacs(args)
    if args.check:
        check = check_index(pacs)
        for path in check.missing_files:
            print(f"indexed but missing: {path}")
        for path in check.unindexed_files:
            print(f"on disk but not indexed: {path}")
        print(
            f"missing files: {len(check.missing_files)}, "
            f"unindexed files: {len(check.unindexed_files)}"
        )
        return 0 if check.consistent else 1
    added, removed = reindex(pacs)
    print(f"indexed: {added}, removed rows without file: {removed}")
    return 0
