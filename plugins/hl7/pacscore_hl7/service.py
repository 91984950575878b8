"""One HL7 message in, one ACK out: decode, apply, log, acknowledge.

- AA: applied (or an ADT event we do not act on, logged as ignored);
- AE: readable, but its content cannot be applied (missing PID-3, unknown
  order to cancel, unknown order control or status); nothing is changed;
- AR: cannot be processed: not HL7, an unsupported HL7 version (MSH-12),
  message type or character set, a frame above ``max_message_bytes``, or
  an internal failure (database unavailable): the sender may retry.

The message, its outcome and the ACK are logged in ``Hl7Message`` in the
transaction that applies it; :func:`replay` runs a logged message again.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from peewee import fn

from pacscore.db import connection, db, is_sqlite, utcnow, write_transaction
from pacscore.worklist import WorklistError
from pacscore_hl7 import orders
from pacscore_hl7.message import (
    INTERNAL_ERROR,
    UNSUPPORTED_VERSION,
    Message,
    Unreadable,
    ack_accept,
    ack_error,
    charset_of,
    codec_for,
    decode,
    version_problem,
)
from pacscore_hl7.models import Hl7Message

log = logging.getLogger(__name__)

PLUGIN_NAME = "hl7"
LARGE_MESSAGE = 256 * 1024  # characters; see _log_connection
TEXT_SHOWN = 65536  # characters of a logged message that recent() returns


@dataclass
class Outcome:
    code: str  # AA, AE, AR
    detail: str
    ack: str
    log_id: int | None = None


class MappingCache:
    """Each application's parsed mapping and ACK sender name, re-read every few
    seconds (a change in the console applies without a restart)."""

    SECONDS = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pacs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, pacs) -> tuple[dict, str]:
        with self._lock:
            loaded, value = self._by_pacs.get(pacs, (-1e9, None))
            if value is None or time.monotonic() - loaded > self.SECONDS:
                value = self._read(pacs)
                self._by_pacs[pacs] = (time.monotonic(), value)
            return value

    @staticmethod
    def _read(pacs) -> tuple[dict, str]:
        with connection():
            settings = pacs.plugin_settings(PLUGIN_NAME)
        try:
            parsed = orders.parse_mapping(settings.get("mapping") or {})
        except ValueError as exc:
            log.error("hl7 mapping setting is invalid (%s): using the defaults", exc)
            parsed = orders.parse_mapping({})
        return parsed, settings.get("application_name") or "PACSCORE"

    def forget(self, pacs) -> None:
        with self._lock:
            self._by_pacs.pop(pacs, None)


_mappings = MappingCache()


def forget_settings(pacs) -> None:
    """Read the plugin settings again at the next message."""
    _mappings.forget(pacs)


def process_frame(pacs, data: bytes, peer: str = "") -> bytes:
    """Handle the payload of one MLLP frame; returns the encoded ACK.  Never raises."""
    try:
        text, charset = decode(data)
    except ValueError as exc:
        text, charset = data.decode("latin-1"), charset_of(data)
        outcome = _reject(pacs, text, charset, peer, str(exc))
        return outcome.ack.encode("latin-1", errors="replace")
    outcome = process_text(pacs, text, charset, peer)
    return outcome.ack.encode(codec_for(charset), errors="replace")


def process_oversized(pacs, head: bytes, size: int, limit: int, peer: str = "") -> bytes:
    """The AR of a frame larger than ``limit`` bytes, of which ``head`` was kept.

    The ACK carries the control ID read from the MSH in ``head``; the log keeps
    that head only.  Never raises.
    """
    charset = charset_of(head)
    text = head.decode(codec_for(charset), errors="replace")
    reason = f"message of {size} bytes refused: larger than max_message_bytes ({limit})"
    outcome = _reject(pacs, text, charset, peer, reason, INTERNAL_ERROR)
    log.warning("HL7 AR from %s: %s", peer, reason)
    return outcome.ack.encode(codec_for(charset), errors="replace")


def _reject(
    pacs, text: str, charset: str, peer: str, reason: str, error: tuple[str, str] | None = None
) -> Outcome:
    try:
        message = Message.parse(text, charset)
    except Unreadable:
        message = None
    _, sender = _mappings.get(pacs)
    outcome = Outcome("AR", reason, ack_error(message, "AR", reason, sender, error))
    _record_alone(message, text, charset, peer, outcome, None)
    return outcome


def process_text(
    pacs, text: str, charset: str, peer: str = "", replay_of: int | None = None
) -> Outcome:
    """Apply a decoded message and log it; returns the outcome with its ACK."""
    mapping, sender = _mappings.get(pacs)
    try:
        message = Message.parse(text, charset)
    except Unreadable as exc:
        outcome = Outcome("AR", str(exc), ack_error(None, "AR", str(exc), sender))
        _record_alone(None, text, charset, peer, outcome, replay_of)
        return outcome
    refused = version_problem(message)
    if refused:  # nothing is applied; the log keeps the message as refused
        ack = ack_error(message, "AR", refused, sender, UNSUPPORTED_VERSION, "MSH^1^12")
        outcome = Outcome("AR", refused, ack)
        _record_alone(message, text, charset, peer, outcome, replay_of)
        log.warning("HL7 AR %s from %s: %s", message.control_id, peer, refused)
        return outcome
    try:
        with _log_connection(text), write_transaction():
            outcome = _apply(pacs, message, mapping, sender)
            outcome.log_id = _record(message, text, charset, peer, outcome, replay_of)
    except Exception as exc:  # noqa: BLE001 - database down or a bug: the sender retries
        log.exception("HL7 message %s could not be processed", message.control_id)
        reason = f"internal error: {type(exc).__name__}: {exc}"
        outcome = Outcome("AR", reason, ack_error(message, "AR", reason, sender, INTERNAL_ERROR))
        _record_alone(message, text, charset, peer, outcome, replay_of)
    if outcome.code != "AA":
        log.warning("HL7 %s %s from %s: %s", outcome.code, message.control_id, peer, outcome.detail)
    pacs.outbox.wake()
    return outcome


def _apply(pacs, message: Message, mapping: dict, sender: str) -> Outcome:
    try:
        with db.atomic():  # a savepoint: content errors undo a partly applied message
            detail = orders.apply(pacs, message, mapping)
    except (orders.ContentError, WorklistError) as exc:
        return Outcome("AE", str(exc), ack_error(message, "AE", str(exc), sender))
    except orders.Unsupported as exc:
        return Outcome("AR", str(exc), ack_error(message, "AR", str(exc), sender))
    return Outcome("AA", detail, ack_accept(message, sender))


@contextmanager
def _log_connection(text: str) -> Iterator[None]:
    """``connection()``, but the SQLite connection that logged a large message is
    closed rather than pooled (unless the caller's block holds it).

    Its cached INSERT keeps the text bound (Python's sqlite3 never clears
    bindings) and its page cache the row's pages: 32 pooled connections kept
    30 MB after as many messages of 900 kB.
    """
    ours = db.is_closed()
    with connection():
        yield
        if ours and len(text) >= LARGE_MESSAGE and is_sqlite() and not db.in_transaction():
            db.manual_close()


def _record(
    message: Message | None,
    text: str,
    charset: str,
    peer: str,
    outcome: Outcome,
    replay_of: int | None,
) -> int:
    code, event = message.message_type if message else ("", "")
    return Hl7Message.insert(
        peer=peer[:64],
        message_type=f"{code}^{event}"[:32] if code else "",
        control_id=(message.control_id if message else "")[:64],
        charset=charset[:32],
        text=text,
        outcome=outcome.code,
        detail=outcome.detail,
        ack=outcome.ack,
        replay_of=replay_of,
    ).execute()


def _record_alone(message, text, charset, peer, outcome, replay_of) -> None:
    try:
        with _log_connection(text), write_transaction():
            outcome.log_id = _record(message, text, charset, peer, outcome, replay_of)
    except Exception:  # noqa: BLE001 - the ACK still goes out
        log.exception("cannot log HL7 message")


def replay(pacs, message_id: int) -> Outcome:
    """Process a logged message again (after fixing the mapping or the data).

    The replay is logged as a new message whose ``replay_of`` is the original.
    Raises ``LookupError`` for an unknown id.
    """
    with connection():
        row = Hl7Message.get_or_none(Hl7Message.id == message_id)
    if row is None:
        raise LookupError(f"no HL7 message {message_id}")
    return process_text(pacs, row.text, row.charset, "replay", replay_of=row.id)


def forget_old_messages(pacs) -> int:
    """Delete logged messages older than ``log_retention_days``; return how many."""
    days = pacs.plugin_settings(PLUGIN_NAME).get("log_retention_days", 90)
    if not days:
        return 0
    limit = utcnow() - timedelta(days=days)
    with connection():
        return Hl7Message.delete().where(Hl7Message.received_at < limit).execute()


def recent(
    limit: int = 100,
    outcome: str | None = None,
    message_type: str | None = None,
    control_id: str | None = None,
    text_limit: int = TEXT_SHOWN,
) -> list[dict]:
    """The latest logged messages, newest first, with their text and ACK (for the console).

    ``message_type`` matches a prefix (``ORM`` finds ``ORM^O01``); ``control_id`` is exact.
    ``text`` is the first ``text_limit`` characters of the message, ``text_length``
    its whole length: a page of large messages stays small.
    """
    columns = [f for f in Hl7Message._meta.sorted_fields if f is not Hl7Message.text]
    text = fn.SUBSTR(Hl7Message.text, 1, text_limit).alias("text")
    length = fn.LENGTH(Hl7Message.text).coerce(False).alias("text_length")
    with connection():
        select = (
            Hl7Message.select(*columns, text, length).order_by(Hl7Message.id.desc()).limit(limit)
        )
        if outcome:
            select = select.where(Hl7Message.outcome == outcome)
        if message_type:
            select = select.where(Hl7Message.message_type.startswith(message_type))
        if control_id:
            select = select.where(Hl7Message.control_id == control_id)
        return [
            {
                "id": r.id,
                "received_at": r.received_at.isoformat(),
                "peer": r.peer,
                "message_type": r.message_type,
                "control_id": r.control_id,
                "outcome": r.outcome,
                "detail": r.detail,
                "replay_of": r.replay_of,
                "text": r.text,
                "text_length": r.text_length,
                "ack": r.ack,
            }
            for r in select
        ]
