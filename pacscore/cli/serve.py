"""``pacscore init``, ``serve`` and ``dicom-listener`` (the extra listener processes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pacscore.cli.common import CommandError, open_pacs
from pacscore.config import Config
from pacscore.db import bind_database, connection, display_url, redact
from pacscore.models import Storage


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("init", help="create the home (config, database, storage)")
    p.add_argument("--admin-password", help="password of the first administrator 'admin'")
    p.add_argument("--db", help="database URL (default sqlite:///index.db in the home)")
    p.add_argument("--aet", help="our AE title (default PACSCORE)")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser("serve", help="run DICOM, HTTP and plugin listeners")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--aet", help="our AE title (default PACSCORE)")
    p.add_argument("--dicom-port", type=int, help="DICOM port (default 11112)")
    p.add_argument("--http-port", type=int, help="console and API port (default 8080)")
    p.add_argument("--hl7-port", type=int, help="HL7 MLLP port for the hl7 plugin (default 2575)")
    p.add_argument(
        "--dicom-processes", type=int, help="DICOM listener processes (default: one per core)"
    )
    p.set_defaults(func=cmd_serve)

    # started by 'serve' (one per extra core); not meant to be run by hand
    p = commands.add_parser("dicom-listener", help="internal: an extra DICOM listener process")
    p.add_argument("--index", type=int, default=1)
    p.add_argument("--aet")
    p.add_argument("--listen-fd", type=int, required=True, help="the inherited listening socket")
    p.set_defaults(func=cmd_dicom_listener)


def cmd_init(args) -> int:
    from pacscore.migrations import create_tables
    from pacscore.models import User
    from pacscore.users import ensure_admin

    home: Path = args.home
    try:
        config = Config.load(home)
    except FileNotFoundError:
        config = Config(home=home)
    if args.db:
        config.db_url = args.db
    if args.aet:
        config.aet = args.aet
    home.mkdir(parents=True, exist_ok=True)
    (home / "storage").mkdir(exist_ok=True)
    try:
        bind_database(config.db_url, home)
        create_tables()  # the core's: a bad URL or server fails here, with its message
    except Exception as exc:  # noqa: BLE001 - any driver error is a bad URL or server
        url = config.db_url  # its password, if any, is shown nowhere
        message = redact(str(exc), url).strip()
        raise CommandError(f"cannot open database {display_url(url)}: {message}") from None
    config.save()
    pacs = open_pacs(args)  # the installed plugins' tables too
    with connection():
        if args.admin_password:
            ensure_admin(args.admin_password)
        generated = None if User.select().exists() else first_admin_password(home)
        storages = [s.path for s in Storage.select()]
    print(f"pacscore home ready: {home}")
    print(f"  database: {display_url(pacs.config.db_url)}")
    print(f"  storage:  {', '.join(storages)}")
    if generated:
        print(f"  console:  log in as 'admin' with the password in {generated}")
        print("            (to be changed at the first login)")
    return 0


def first_admin_password(home: Path) -> Path:
    """Create 'admin' with a random password, written once to a file only root can read.

    Without it a fresh ``make serve`` would have no account to open the console.
    """
    import secrets

    from pacscore.users import ensure_admin

    password = secrets.token_urlsafe(12)
    admin = ensure_admin(password)
    admin.must_change_password = True
    admin.save()
    path = home / "initial-admin-password"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(password + "\n")
    return path


def cmd_serve(args) -> int:
    from pacscore.dicom.pynetdicom_ext import UnsupportedPynetdicom
    from pacscore.server import AlreadyServing, serve

    pacs = open_pacs(args)
    config = pacs.config
    _apply_listener_options(config, args)
    try:
        serve(pacs, log_level=args.log_level)
    except (AlreadyServing, UnsupportedPynetdicom, OSError) as exc:
        raise CommandError(str(exc)) from exc
    return 0


def cmd_dicom_listener(args) -> int:
    from pacscore.listeners import run_listener

    pacs = open_pacs(args)
    _apply_listener_options(pacs.config, args)
    run_listener(pacs, args.listen_fd)
    return 0


def _apply_listener_options(config: Config, args) -> None:
    for name in ("host", "aet", "dicom_port", "http_port", "hl7_port", "dicom_processes"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
