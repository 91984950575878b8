"""``pacscore user add|unlock|list``: console and API accounts."""

from __future__ import annotations

import argparse
import json
import sys

from pacscore.cli.common import CommandError, open_pacs, refused
from pacscore.db import connection
from pacscore.services import Invalid, Taken
from pacscore.services import users as user_service


def add_parser(commands: argparse._SubParsersAction) -> None:
    user = commands.add_parser("user", help="console and API accounts").add_subparsers(
        dest="user_command", metavar="ACTION", required=True
    )
    p = user.add_parser("add", help="add a local account (password read from stdin)")
    p.add_argument("login")
    p.add_argument("--profile", required=True, help="profile name, e.g. 'radiologist'")
    p.add_argument("--email")
    p.add_argument(
        "--service", action="append", help="restrict to a service filter, by name (repeatable)"
    )
    p.set_defaults(func=cmd_user_add)
    p = user.add_parser("unlock", help="unlock an account locked by failed logins")
    p.add_argument("login")
    p.set_defaults(func=cmd_user_unlock)
    user.add_parser("list", help="list accounts").set_defaults(func=cmd_user_list)


def cmd_user_add(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("no password on stdin (echo 'PASSWORD' | pacscore user add ...)")
    data = {
        "login": args.login,
        "profile": args.profile,
        "email": args.email or "",
        "services": args.service or [],
        "password": password,
    }
    with connection():
        try:
            user_service.save_user(pacs, None, data)
        except Taken:
            raise CommandError(f"a user named {args.login!r} already exists") from None
        except Invalid as exc:
            if "profile" in exc.errors:
                names = ", ".join(user_service.profile_names())
                message = f"no profile named {args.profile!r}; profiles: {names}"
                raise CommandError(message) from None
            if "password" in exc.errors:  # e.g. shorter than the site's minimum
                raise CommandError(" ".join(exc.errors["password"])) from None
            raise refused(exc) from None
    print(f"user {args.login} added with profile {args.profile}")
    return 0


def cmd_user_unlock(args) -> int:
    open_pacs(args, load_plugins=False)
    with connection():
        user_service.unlock_user(user_service.user_named(args.login))
    print(f"user {args.login} unlocked")
    return 0


def cmd_user_list(args) -> int:
    open_pacs(args, load_plugins=False)
    with connection():
        for user in user_service.users():
            services = ",".join(json.loads(user.services or "[]")) or "-"
            print(f"{user.login}\t{user.profile}\t{user.status}\t{user.auth_source}\t{services}")
    return 0
