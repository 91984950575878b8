"""Outgoing e-mail: every mail is a durable job of kind ``mail``.

:func:`send_mail` (``pacs.send_mail``) only validates and enqueues, so a
caller in a DICOM or web thread never waits for a mail server and nothing is
lost on restart.  The built-in plugin ``mail`` runs the jobs: it builds the
:class:`~email.message.EmailMessage`, passes it through every ``prepare_mail``
implementation (fill in the sender, encrypt, ...; an exception fails the
job), then asks ``deliver_mail`` (the first implementation returning ``True``
delivered it).  The core knows no mail server: without a plugin delivering
mail (``pacscore-email``), mail jobs fail with a clear error.
"""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any

from pacscore.jobs import PermanentJobError

if TYPE_CHECKING:
    from pacscore.app import Pacs

MAIL_JOB_KIND = "mail"
# a mail server down for a weekend is the common case; a week is the limit
MAIL_RETRY_SCHEDULE = [60, 300, 1800, 3600, 4 * 3600, 86400, 2 * 86400, 4 * 86400]
KIND_HEADER = "X-Pacscore-Mail-Kind"


class NoMailDelivery(RuntimeError):
    """No installed plugin delivered the mail (``deliver_mail`` answered ``None``)."""


def _check_address(address: str) -> str:
    address = address.strip()
    if not address or any(c in address for c in "\r\n"):
        raise ValueError(f"invalid e-mail address {address!r}")
    try:
        parsed = Address(addr_spec=address)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"invalid e-mail address {address!r}: {exc}") from exc
    if not parsed.username or not parsed.domain:
        raise ValueError(f"invalid e-mail address {address!r}")
    return address


def mail_payload(
    to: list[str],
    subject: str,
    text: str,
    html: str | None = None,
    kind: str = "",
    reply_to: str | None = None,
) -> dict[str, Any]:
    """Validate a mail and return it as a JSON-serialisable job payload."""
    if isinstance(to, str):
        to = [to]
    recipients = [_check_address(a) for a in to]
    if not recipients:
        raise ValueError("a mail needs at least one recipient")
    if any(c in subject for c in "\r\n"):
        raise ValueError("a mail subject is one line")
    return {
        "to": recipients,
        "subject": subject,
        "text": text,
        "html": html,
        "kind": kind,
        "reply_to": _check_address(reply_to) if reply_to else None,
    }


def send_mail(
    pacs: Pacs,
    to: list[str],
    subject: str,
    text: str,
    html: str | None = None,
    kind: str = "",
    reply_to: str | None = None,
) -> int:
    """Enqueue a mail job; return its id.  Raises ``ValueError`` on a bad address.

    ``kind`` says what the mail is about (``password_reset``, ``alert``,
    ``study_shared``, ...); plugins see it in the ``X-Pacscore-Mail-Kind``
    header, which is removed before delivery.  Called inside a transaction,
    the job commits with it.
    """
    payload = mail_payload(to, subject, text, html, kind, reply_to)
    return pacs.jobs.enqueue(MAIL_JOB_KIND, payload)


def build_message(payload: dict[str, Any]) -> EmailMessage:
    """The message of a mail job, before ``prepare_mail`` (no sender yet)."""
    message = EmailMessage()
    message["To"] = ", ".join(payload["to"])
    message["Subject"] = payload["subject"]
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="pacscore.invalid")
    if payload.get("reply_to"):
        message["Reply-To"] = payload["reply_to"]
    if payload.get("kind"):
        message[KIND_HEADER] = payload["kind"]
    message.set_content(payload["text"])
    if payload.get("html"):
        message.add_alternative(payload["html"], subtype="html")
    return message


def deliver(pacs: Pacs, payload: dict[str, Any]) -> EmailMessage:
    """Build, prepare and deliver one mail now; raise on failure.

    Used by the mail job handler and by "send a test mail" commands that
    want the server's answer at once.  Returns the message as delivered.
    """
    try:
        message = build_message(payload)
    except (KeyError, TypeError, ValueError) as exc:
        # a payload that cannot become a message never will
        raise PermanentJobError(f"invalid mail: {exc}") from exc
    message = pacs.hooks.relay.prepare_mail(pacs=pacs, message=message)
    del message[KIND_HEADER]
    if not pacs.hooks.relay.deliver_mail(pacs=pacs, message=message):
        raise NoMailDelivery(
            "no plugin delivers e-mail: install and configure pacscore-email (SMTP)"
        )
    return message


def run_mail_job(pacs: Pacs, payload: dict[str, Any]) -> None:
    """Job handler of kind ``mail``."""
    deliver(pacs, payload)
