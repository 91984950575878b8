"""Declared DICOM nodes: look up, create, change, delete, C-ECHO."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peewee import IntegrityError

from pacscore.models import Node
from pacscore.services import Actor, Invalid, NotFound, Taken, load, record
from pacscore.services.schemas import NodeSchema

if TYPE_CHECKING:
    from pacscore.app import Pacs

SCHEMA = NodeSchema()
ECHO_TIMEOUT = 10


def get(node_id: int) -> Node:
    node = Node.get_or_none(Node.id == node_id)
    if node is None:
        raise NotFound("no such node")
    return node


def named(name: str) -> Node:
    node = Node.get_or_none(Node.name == name)
    if node is None:
        raise NotFound(f"no node named {name!r}")
    return node


def listed() -> list[Node]:
    return list(Node.select().order_by(Node.name))


def save(
    pacs: Pacs,
    node: Node | None,
    data: Mapping[str, Any],
    actor: Actor | None = None,
    partial: bool = False,
    preferred_transfer_syntax: str | None = None,
) -> Node:
    """Create (``node`` None) or change a node from ``data`` (with ``partial``, only the
    fields given change); a duplicate name is a field error (:class:`Taken`).

    ``preferred_transfer_syntax`` (a UID or a name, "" for none) is the command
    line's ``--preferred-ts``: the console and the API do not show it.
    """
    values = load(SCHEMA, data, partial=partial)
    if preferred_transfer_syntax is not None:
        values["preferred_transfer_syntax"] = transfer_syntax(preferred_transfer_syntax)
    target = node or Node()
    for name, value in values.items():
        setattr(target, name, value)
    try:
        target.save()
    except IntegrityError:
        raise Taken({"name": ["a node with this name already exists"]}) from None
    pacs.nodes.invalidate()
    record(actor, "node_save", target=target.name, created=node is None)
    return target


def transfer_syntax(text: str) -> str:
    """A Transfer Syntax UID given by UID or by name (case-insensitive), or ""."""
    from pydicom.uid import UID, AllTransferSyntaxes

    text = (text or "").strip()
    if not text:
        return ""
    for uid in AllTransferSyntaxes:
        if text == uid or text.lower() in (UID(uid).name.lower(), UID(uid).keyword.lower()):
            return str(uid)
    message = f"unknown transfer syntax {text!r}: give its UID or its name"
    raise Invalid({"preferred_transfer_syntax": [message]})


def delete(pacs: Pacs, node: Node, actor: Actor | None = None) -> None:
    node.delete_instance()
    pacs.nodes.invalidate()
    record(actor, "node_delete", target=node.name)


def echo(pacs: Pacs, node: Node, timeout: float = ECHO_TIMEOUT) -> dict[str, Any]:
    """C-ECHO ``node``: ``success``, ``milliseconds`` (rounded to 0.1) and ``error``."""
    from pacscore.dicom.scu import EchoFailed, echo

    try:
        elapsed = echo(node, pacs.config.aet, timeout=timeout)
    except (EchoFailed, OSError, RuntimeError, ValueError) as exc:
        return {"success": False, "milliseconds": None, "error": str(exc)}
    return {"success": True, "milliseconds": round(elapsed, 1), "error": ""}
