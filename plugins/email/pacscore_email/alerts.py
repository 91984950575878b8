"""Alert notifications: templates, recipients per kind, and the quiet period."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from peewee import IntegrityError

from pacscore.db import db, is_sqlite, utcnow, write_transaction

from .models import MailAlertSent
from .settings import ALERTS_KEY

log = logging.getLogger(__name__)

TITLES = {
    "storage_full": "no storage folder can take new files",
    "storage_unavailable": "a storage folder is unavailable",
    "low_disk_space": "free disk space is low",
    "file_save_error": "a received file could not be saved",
}

templates = Environment(
    loader=PackageLoader("pacscore_email", "templates"),
    autoescape=select_autoescape(["html"]),
    keep_trailing_newline=True,
)


def render(name: str, **context: Any) -> tuple[str, str]:
    """The plain text and HTML bodies of template ``name`` (``name.txt``, ``name.html``)."""
    context.setdefault("now", utcnow().strftime("%Y-%m-%d %H:%M UTC"))
    text = templates.get_template(f"{name}.txt").render(**context)
    html = templates.get_template(f"{name}.html").render(**context)
    return text, html


def recipients_for(settings: dict[str, Any], kind: str) -> list[str]:
    by_kind = settings["recipients"]
    return list(by_kind.get(kind) or by_kind.get(ALERTS_KEY) or [])


def alert_key(kind: str, details: dict[str, Any]) -> str:
    # the same problem on the same folder is one alert, whatever the numbers say
    return f"{kind}:{details.get('storage', '')}"[:255]


def claim(key: str, quiet_seconds: int) -> int | None:
    """Record that alert ``key`` is mailed now, unless it was within the quiet period.

    Returns the number of occurrences not mailed since the previous mail, or
    ``None`` when this one must not be mailed.  Call it in a transaction.
    """
    now = utcnow()
    query = MailAlertSent.select().where(MailAlertSent.key == key)
    if not is_sqlite():
        query = query.for_update()  # two processes alerting at once: one mail
    row = query.first()
    if row is None:
        try:
            with db.atomic():  # a savepoint: the outer transaction survives a conflict
                MailAlertSent.create(key=key, last_sent=now)
        except IntegrityError:  # another process mailed it a moment ago
            return None
        return 0
    if row.last_sent > now - timedelta(seconds=quiet_seconds):
        MailAlertSent.update(suppressed=MailAlertSent.suppressed + 1).where(
            MailAlertSent.id == row.id
        ).execute()
        return None
    MailAlertSent.update(last_sent=now, suppressed=0).where(MailAlertSent.id == row.id).execute()
    return row.suppressed


def mail_alert(
    pacs, settings: dict[str, Any], kind: str, message: str, details: dict[str, Any]
) -> int | None:
    """Enqueue the mail of an alert; return the job id, ``None`` if not mailed."""
    recipients = recipients_for(settings, kind)
    if not recipients:
        log.debug("alert %s: no recipient configured", kind)
        return None
    title = TITLES.get(kind, kind.replace("_", " "))
    with write_transaction():
        suppressed = claim(alert_key(kind, details), settings["quiet_period_minutes"] * 60)
        if suppressed is None:
            return None
        text, html = render(
            "alert",
            site_name=settings["site_name"],
            server_name=settings["server_name"],
            title=title,
            message=message,
            details={k: str(v) for k, v in details.items()},
            suppressed=suppressed,
        )
        # the job commits with the quiet-period row: mailed once, never lost
        return pacs.send_mail(
            recipients, f"[{settings['site_name']}] {title}", text, html, kind=f"alert:{kind}"
        )
