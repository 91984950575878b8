"""Sending one message over SMTP, and sorting the failures into temporary
(the mail job is retried) and permanent (the job fails at once)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from pacscore.jobs import PermanentJobError


def tls_context(settings: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings["tls_ca_file"] or None)
    if not settings["tls_verify"]:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(settings: dict[str, Any], password: str) -> smtplib.SMTP:
    """An SMTP session ready to send (TLS and AUTH done as configured)."""
    host, port, timeout = settings["smtp_host"], settings["smtp_port"], settings["timeout_seconds"]
    if settings["security"] == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            host, port, timeout=timeout, context=tls_context(settings)
        )
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        smtp.ehlo()
        if settings["security"] == "starttls":
            smtp.starttls(context=tls_context(settings))
            smtp.ehlo()
        if settings["login"]:
            smtp.login(settings["login"], password)
    except BaseException:
        smtp.close()
        raise
    return smtp


def envelope_recipients(message: EmailMessage) -> list[str]:
    fields = [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]
    return [address for _, address in getaddresses(fields) if address]


def _reply(code: int, text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {text}".strip()


def send(settings: dict[str, Any], password: str, message: EmailMessage) -> None:
    """Send ``message``; raise ``PermanentJobError`` on a 5xx answer about the mail.

    Connection errors, timeouts, 4xx answers and AUTH failures (a setting an
    administrator can fix) raise other exceptions: the job is retried.
    """
    recipients = envelope_recipients(message)
    del message["Bcc"]
    smtp = connect(settings, password)
    try:
        refused = smtp.send_message(message, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        refused, delivered = exc.recipients, []
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        reply = _reply(exc.smtp_code, exc.smtp_error)
        if 500 <= exc.smtp_code < 600:
            raise PermanentJobError(f"the SMTP server refused the mail: {reply}") from exc
        raise
    else:
        delivered = [r for r in recipients if r not in refused]
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    if refused:
        _raise_refused(refused, delivered)


def _raise_refused(refused: dict[str, tuple[int, bytes]], delivered: list[str]) -> None:
    answers = "; ".join(f"{rcpt}: {_reply(code, text)}" for rcpt, (code, text) in refused.items())
    if delivered:
        # the others have it: a retry would send them a second copy
        raise PermanentJobError(
            f"delivered to {', '.join(delivered)}; refused by the SMTP server: {answers}"
        )
    if all(500 <= code < 600 for code, _ in refused.values()):
        raise PermanentJobError(f"the SMTP server refused every recipient: {answers}")
    raise smtplib.SMTPException(f"the SMTP server deferred the recipients: {answers}")
