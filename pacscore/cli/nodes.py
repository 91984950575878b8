"""``pacscore node add|list|remove`` and ``pacscore echo``."""

from __future__ import annotations

import argparse

from pacscore.cli.common import CommandError, open_pacs, refused
from pacscore.db import connection
from pacscore.models import Node
from pacscore.services import Invalid, Taken
from pacscore.services import nodes as node_service


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    data = {"name": args.name, "aet": args.aet, "host": args.host, "port": args.port}
    data.update({f"allow_{r}": r in rights for r in Node.RIGHTS})
    pacs = open_pacs(args, load_plugins=False)
    with connection():
        try:
            node_service.save(pacs, None, data, preferred_transfer_syntax=args.preferred_ts)
        except Taken:
            raise CommandError(f"a node named {args.name!r} already exists") from None
        except Invalid as exc:
            raise _refused(exc, args) from None
    print(f"node {args.name} added ({args.aet}@{args.host}:{args.port})")
    return 0


def _refused(exc: Invalid, args) -> CommandError:
    """The node schema's refusal, in the words this command has always used for the
    port, the AE title's length and the transfer syntax."""
    if "port" in exc.errors:
        return CommandError(f"invalid port {args.port}")
    if "aet" in exc.errors and not 0 < len(args.aet) <= 16:
        return CommandError("an AE title has 1 to 16 characters")
    if "preferred_transfer_syntax" in exc.errors:
        return CommandError(exc.message)
    return refused(exc)


def cmd_node_list(args) -> int:
    open_pacs(args, load_plugins=False)
    with connection():
        nodes = node_service.listed()
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
    pacs = open_pacs(args, load_plugins=False)
    with connection():
        node_service.delete(pacs, node_service.named(args.name))
    print(f"node {args.name} removed")
    return 0


def cmd_echo(args) -> int:
    pacs = open_pacs(args, load_plugins=False)
    with connection():
        node = node_service.named(args.node)
    result = node_service.echo(pacs, node, timeout=args.timeout)
    if not result["success"]:
        raise CommandError(f"C-ECHO to {node.name} failed: {result['error']}")
    print(
        f"C-ECHO {node.name} ({node.aet}@{node.host}:{node.port}): "
        f"success in {result['milliseconds']:.1f} ms"
    )
    return 0
