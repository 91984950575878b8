"""The ``pacscore`` command line.

``pacscore [--home DIR] COMMAND``; the home defaults to ``$PACSCORE_HOME``,
else ``./pacscore-home``.  Every command exits non-zero with a message on
stderr when it fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from marshmallow import ValidationError

from pacscore.config import (
    CORE_SETTINGS,
    Config,
    coerce_for_schema,
    default_home,
    parse_assignment,
)
from pacscore.jobs import STATES as JOB_STATES
from pacscore.models import (
    Node,
    PluginFailureRecord,
    PluginState,
    Storage,
    bind_database,
    connection,
    create_tables,
    display_url,
    redact,
)


class CommandError(Exception):
    """A user-facing failure: printed as ``error: ...`` with exit status 1."""


def _open(args, load_plugins: bool = True):
    from pacscore.app import open_pacs

    try:
        return open_pacs(args.home, load_plugins=load_plugins)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc


# -- init / serve ---------------------------------------------------------------


def cmd_init(args) -> int:
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
        create_tables()
    except Exception as exc:  # noqa: BLE001 - any driver error is a bad URL or server
        url = config.db_url  # its password, if any, is shown nowhere
        message = redact(str(exc), url).strip()
        raise CommandError(f"cannot open database {display_url(url)}: {message}") from None
    config.save()
    pacs = _open(args, load_plugins=False)
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
    from pacscore.server import AlreadyServing, serve

    pacs = _open(args)
    config = pacs.config
    _apply_listener_options(config, args)
    try:
        serve(pacs, log_level=args.log_level)
    except (AlreadyServing, OSError) as exc:
        raise CommandError(str(exc)) from exc
    return 0


def cmd_dicom_listener(args) -> int:
    from pacscore.listeners import run_listener

    pacs = _open(args)
    _apply_listener_options(pacs.config, args)
    run_listener(pacs, args.listen_fd)
    return 0


def _apply_listener_options(config: Config, args) -> None:
    for name in ("host", "aet", "dicom_port", "http_port", "hl7_port", "dicom_processes"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)


# -- import / reindex -----------------------------------------------------------


def cmd_import(args) -> int:
    from pacscore.importer import import_paths

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise CommandError(f"no such file or folder: {', '.join(missing)}")
    pacs = _open(args)
    report = import_paths(pacs, args.paths, progress=not args.quiet)
    print(f"imported: {report.imported}")
    print(f"duplicates: {report.duplicates}")
    print(f"rejected: {len(report.rejected)}")
    for path, reason in report.rejected:
        print(f"  {path}: {reason}")
    return 0


def cmd_reindex(args) -> int:
    from pacscore.importer import check_index, reindex

    pacs = _open(args)
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


# -- nodes ------------------------------------------------------------------------


def _parse_rights(text: str) -> set[str]:
    rights = {r.strip() for r in text.split(",") if r.strip()}
    unknown = rights - set(Node.RIGHTS)
    if unknown:
        raise CommandError(
            f"unknown right(s) {', '.join(sorted(unknown))}; choose from {', '.join(Node.RIGHTS)}"
        )
    return rights


def cmd_node_add(args) -> int:
    rights = _parse_rights(args.allow)
    if not 0 < args.port < 65536:
        raise CommandError(f"invalid port {args.port}")
    if not 0 < len(args.aet) <= 16:
        raise CommandError("an AE title has 1 to 16 characters")
    preferred_ts = _transfer_syntax(args.preferred_ts)
    _open(args, load_plugins=False)
    with connection():
        if Node.select().where(Node.name == args.name).exists():
            raise CommandError(f"a node named {args.name!r} already exists")
        Node.create(
            name=args.name,
            aet=args.aet,
            host=args.host,
            port=args.port,
            preferred_transfer_syntax=preferred_ts,
            **{f"allow_{r}": r in rights for r in Node.RIGHTS},
        )
    print(f"node {args.name} added ({args.aet}@{args.host}:{args.port})")
    return 0


def _transfer_syntax(text: str) -> str:
    """A Transfer Syntax UID given by UID or by name (case-insensitive), or ""."""
    from pydicom.uid import UID, AllTransferSyntaxes

    text = (text or "").strip()
    if not text:
        return ""
    for uid in AllTransferSyntaxes:
        if text == uid or text.lower() in (UID(uid).name.lower(), UID(uid).keyword.lower()):
            return str(uid)
    raise CommandError(f"unknown transfer syntax {text!r}: give its UID or its name")


def cmd_node_list(args) -> int:
    _open(args, load_plugins=False)
    with connection():
        nodes = list(Node.select().order_by(Node.name))
    if not nodes:
        print("no node declared")
    for node in nodes:
        state = "" if node.enabled else " (disabled)"
        preferred = (
            f"\tts={node.preferred_transfer_syntax}" if node.preferred_transfer_syntax else ""
        )
        print(
            f"{node.name}\t{node.aet}\t{node.host}:{node.port}\t"
            f"allow={','.join(node.rights()) or '-'}{state}{preferred}"
        )
    return 0


def cmd_node_remove(args) -> int:
    _open(args, load_plugins=False)
    with connection():
        if not Node.delete().where(Node.name == args.name).execute():
            raise CommandError(f"no node named {args.name!r}")
    print(f"node {args.name} removed")
    return 0


def cmd_echo(args) -> int:
    from pacscore.dicom.scu import EchoFailed, echo

    pacs = _open(args, load_plugins=False)
    with connection():
        node = Node.get_or_none(Node.name == args.node)
    if node is None:
        raise CommandError(f"no node named {args.node!r}")
    try:
        elapsed = echo(node, pacs.config.aet, timeout=args.timeout)
    except EchoFailed as exc:
        raise CommandError(f"C-ECHO to {node.name} failed: {exc}") from exc
    print(f"C-ECHO {node.name} ({node.aet}@{node.host}:{node.port}): success in {elapsed:.1f} ms")
    return 0


# -- plugins -------------------------------------------------------------------------


def cmd_plugins_list(args) -> int:
    pacs = _open(args)
    with connection():
        for info in pacs.hooks.list():
            line = f"{info.name}\t{info.version}\t{'enabled' if info.enabled else 'disabled'}"
            line += f"\t{info.state}"
            if info.error:
                line += f": {info.error}"
            print(line)
        recent = (
            PluginFailureRecord.select()
            .where(PluginFailureRecord.hook != "load")
            .order_by(PluginFailureRecord.id.desc())
            .limit(10)
        )
        for failure in recent:
            print(
                f"  failure {failure.at:%Y-%m-%d %H:%M:%S} {failure.plugin}.{failure.hook}: "
                f"{failure.error.splitlines()[-1] if failure.error else ''}"
            )
    return 0


def _set_plugin_enabled(args, enabled: bool) -> int:
    pacs = _open(args)
    if args.name not in {info.name for info in pacs.hooks.list() if not info.builtin}:
        raise CommandError(f"no installed plugin named {args.name!r}")
    with connection():
        PluginState.insert(name=args.name, enabled=enabled).on_conflict(
            conflict_target=[PluginState.name], update={PluginState.enabled: enabled}
        ).execute()
    state = "enabled" if enabled else "disabled"
    print(f"plugin {args.name} {state} (a running server follows within a second)")
    return 0


def cmd_plugins_configure(args) -> int:
    pacs = _open(args)
    schema = pacs.hooks.settings_schema(args.name)
    if schema is None:
        raise CommandError(f"plugin {args.name!r} is not loaded or has no settings")
    with connection():
        if args.set:
            changes = {}
            for assignment in args.set:
                key, raw = parse_assignment(assignment)
                changes[key] = coerce_for_schema(schema, key, raw)
            pacs.save_plugin_settings(args.name, changes)
        print(json.dumps(schema.dump(pacs.plugin_settings(args.name)), indent=2, default=str))
    return 0


# -- settings / storage -------------------------------------------------------------


def cmd_settings(args) -> int:
    pacs = _open(args, load_plugins=False)
    with connection():
        if args.set:
            changes = {}
            for assignment in args.set:
                key, raw = parse_assignment(assignment)
                changes[key] = coerce_for_schema(CORE_SETTINGS, key, raw)
            pacs.settings.update_core(changes)
        print(json.dumps(CORE_SETTINGS.dump(pacs.settings.core), indent=2))
    return 0


def cmd_storage_list(args) -> int:
    from pacscore.storage import MB, free_bytes

    _open(args, load_plugins=False)
    with connection():
        for storage in Storage.select().order_by(Storage.position, Storage.id):
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
    _open(args, load_plugins=False)
    path = args.path.absolute()
    path.mkdir(parents=True, exist_ok=True)
    with connection():
        if Storage.select().where(Storage.name == args.name).exists():
            raise CommandError(f"a storage named {args.name!r} already exists")
        last = Storage.select().order_by(Storage.position.desc()).first()
        Storage.create(
            name=args.name,
            path=str(path),
            min_free_mb=args.min_free_mb,
            position=(last.position + 1) if last else 0,
        )
    print(f"storage {args.name} added: {path}")
    return 0


def cmd_storage_set(args) -> int:
    _open(args, load_plugins=False)
    changes = {}
    if args.min_free_mb is not None:
        changes[Storage.min_free_mb] = args.min_free_mb
    if args.enabled is not None:
        changes[Storage.enabled] = args.enabled
    if not changes:
        raise CommandError("nothing to change: give --min-free-mb, --enable or --disable")
    with connection():
        if not Storage.update(changes).where(Storage.name == args.name).execute():
            raise CommandError(f"no storage named {args.name!r}")
    print(f"storage {args.name} updated")
    return 0


# -- jobs ------------------------------------------------------------------------------


def cmd_jobs_list(args) -> int:
    pacs = _open(args, load_plugins=False)
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
    pacs = _open(args, load_plugins=False)
    job = pacs.jobs.get(args.id)
    if job is None:
        raise CommandError(f"no job with id {args.id}")
    if not pacs.jobs.retry_now(args.id):
        raise CommandError(f"job {args.id} is running: it cannot be retried now")
    print(f"job {args.id} ({job.kind}) will be retried now")
    return 0


def cmd_jobs_delete(args) -> int:
    pacs = _open(args, load_plugins=False)
    if not pacs.jobs.delete(args.id):
        raise CommandError(f"no job with id {args.id}")
    print(f"job {args.id} deleted")
    return 0


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
    for impl in host.pm.hook.cli_commands.get_hookimpls():
        before = set(commands.choices)
        try:
            impl.function(subparsers=commands)
        except Exception:  # noqa: BLE001 - a plugin must not break the command line
            logging.getLogger(__name__).exception("plugin %s: cli_commands", impl.plugin_name)
        for name in set(commands.choices) - before:
            commands.choices[name].set_defaults(plugin_command=impl.plugin_name)


def run_plugin_command(args) -> int:
    pacs = _open(args)
    if pacs.hooks.pm.get_plugin(args.plugin_command) is None:
        raise CommandError(
            f"plugin {args.plugin_command} is disabled or failed to load "
            f"(see 'pacscore plugins list'): '{args.command}' is unavailable"
        )
    with connection():
        return args.func(args, pacs) or 0


# -- users -------------------------------------------------------------------------------


def cmd_user_add(args) -> int:
    from pacscore.models import Profile, User, db
    from pacscore.users import set_password

    pacs = _open(args, load_plugins=False)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("no password on stdin (echo 'PASSWORD' | pacscore user add ...)")
    with connection():
        if not Profile.select().where(Profile.name == args.profile).exists():
            names = ", ".join(p.name for p in Profile.select().order_by(Profile.name))
            raise CommandError(f"no profile named {args.profile!r}; profiles: {names}")
        if User.select().where(User.login == args.login).exists():
            raise CommandError(f"a user named {args.login!r} already exists")
        with db.atomic():
            user = User.create(
                login=args.login,
                profile=args.profile,
                email=args.email or "",
                services=json.dumps(args.service or []),
            )
            set_password(pacs, user, password)
    print(f"user {args.login} added with profile {args.profile}")
    return 0


def cmd_user_unlock(args) -> int:
    from pacscore.models import User
    from pacscore.users import unlock

    _open(args, load_plugins=False)
    with connection():
        user = User.get_or_none(User.login == args.login)
        if user is None:
            raise CommandError(f"no user named {args.login!r}")
        unlock(user)
    print(f"user {args.login} unlocked")
    return 0


def cmd_user_list(args) -> int:
    from pacscore.models import User

    _open(args, load_plugins=False)
    with connection():
        for user in User.select().order_by(User.login):
            services = ",".join(json.loads(user.services or "[]")) or "-"
            print(f"{user.login}\t{user.profile}\t{user.status}\t{user.auth_source}\t{services}")
    return 0


# -- worklist ------------------------------------------------------------------------


def cmd_worklist_list(args) -> int:
    from pacscore.worklist import STATUSES

    status = args.status.upper() if args.status else None
    if status and status not in STATUSES:
        raise CommandError(f"unknown status {args.status!r}; choose from {', '.join(STATUSES)}")
    pacs = _open(args, load_plugins=False)
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


# -- parser ----------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


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

    p = commands.add_parser("import", help="import DICOM files and folders into the archive")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("reindex", help="rebuild the index from the storage folders")
    p.add_argument("--check", action="store_true", help="only report inconsistencies (exit 1)")
    p.set_defaults(func=cmd_reindex)

    node = commands.add_parser("node", help="declared DICOM nodes").add_subparsers(
        dest="node_command", metavar="ACTION", required=True
    )
    p = node.add_parser("add", help="declare a node")
    p.add_argument("name")
    p.add_argument("--aet", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument(
        "--allow",
        default="store",
        help=f"comma-separated rights among {','.join(Node.RIGHTS)} (default store)",
    )
    p.add_argument(
        "--preferred-ts",
        default="",
        metavar="UID",
        help="transfer syntax to send in when the node accepts it (UID or name, e.g. "
        "ExplicitVRLittleEndian); default: as stored",
    )
    p.set_defaults(func=cmd_node_add)
    node.add_parser("list", help="list nodes").set_defaults(func=cmd_node_list)
    p = node.add_parser("remove", help="remove a node")
    p.add_argument("name")
    p.set_defaults(func=cmd_node_remove)

    p = commands.add_parser("echo", help="C-ECHO a declared node")
    p.add_argument("node")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_echo)

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

    p = commands.add_parser("settings", help="show or change the core settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_settings)

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

    add_plugin_commands(commands)
    return parser


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
        print(f"error: invalid value: {json.dumps(exc.messages)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
