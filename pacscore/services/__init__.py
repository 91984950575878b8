"""The service layer: each administrative operation and its rules, once.

The command line (:mod:`pacscore.cli`), the console pages and the REST API
(:mod:`pacscore.web`) all call these functions, so a rule (what input is
valid, which change is refused, what the audit trail records) exists in one
place.  One module per noun: :mod:`~pacscore.services.nodes`,
:mod:`~pacscore.services.storages`, :mod:`~pacscore.services.users` (accounts
and profiles), :mod:`~pacscore.services.service_filters`,
:mod:`~pacscore.services.plugins`, :mod:`~pacscore.services.settings`,
:mod:`~pacscore.services.jobs` and :mod:`~pacscore.services.audit`; the input
schemas are in :mod:`~pacscore.services.schemas`.

Services never import Flask or :mod:`pacscore.web`: they refuse with the
exceptions below, which the web layer answers with its HTTP status or a
flashed message, and the command line with ``error: ...`` and exit status 1.
Who asks is an :class:`Actor` (audited), or ``None`` for the command line,
which runs as the host's administrator outside the audit trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError

from pacscore.audit import record as audit_record  # not "audit": the name of a submodule

if TYPE_CHECKING:
    from pacscore.models import User


class ServiceError(Exception):
    """An operation refused; ``str(exc)`` says why, for a person."""


class NotFound(ServiceError):
    """The object does not exist (HTTP 404)."""


class Conflict(ServiceError):
    """The operation contradicts the current state, e.g. a storage still in use (HTTP 409)."""


class Invalid(ServiceError):
    """Input refused: ``errors`` maps each field (``_schema`` for the whole) to its messages,
    as marshmallow's ``normalized_messages()`` does (HTTP 400, or the form's field errors)."""

    def __init__(self, errors: dict[str, Any]) -> None:
        self.errors = errors
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """Every message, joined by spaces (a flash, an ``abort`` description)."""
        return " ".join(str(m) for messages in self.errors.values() for m in _listed(messages))

    @classmethod
    def of(cls, exc: ValidationError) -> Invalid:
        return cls(exc.normalized_messages())


class Taken(Invalid):
    """A unique name (node, storage, login, profile, service filter) is already used: a
    field error like any other, told apart by the command line's messages."""


def _listed(messages: Any) -> list[Any]:
    return messages if isinstance(messages, list) else [messages]


@dataclass(frozen=True)
class Actor:
    """Who asks for an operation: a user of the console or API, from ``source_ip``.

    ``via`` (``"api"``) is added to the details of what is audited.  A rule
    about the actor's own account (not deleting it, keeping the right to
    manage users) reads ``user``.
    """

    user: User | None = None
    source_ip: str = ""
    via: str | None = None

    @property
    def login(self) -> str:
        return self.user.login if self.user is not None else ""

    def is_user(self, user: User) -> bool:
        return self.user is not None and self.user.id == user.id


def record(actor: Actor | None, action: str, target: str = "", **details: Any) -> None:
    """Audit ``action`` of ``actor`` (nothing for the command line's ``None``)."""
    if actor is None:
        return
    if actor.via:
        details["via"] = actor.via
    audit_record(action, actor=actor.login, target=target, source_ip=actor.source_ip, **details)


def load(schema: Schema, data: Mapping[str, Any], partial: bool = False) -> dict[str, Any]:
    """``data`` validated by ``schema``; with ``partial``, only the fields given."""
    try:
        values = schema.load(data, partial=partial)
    except ValidationError as exc:
        raise Invalid.of(exc) from None
    return {k: v for k, v in values.items() if k in data} if partial else values
