"""The audit trail as the console and the API search it."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from peewee import ModelSelect

from pacscore.models import AuditEvent


def query(filters: dict[str, Any]) -> ModelSelect:
    """Events newest first, by ``actor``, ``action`` and dates (``date_from``, ``date_to``:
    whole days), each filter only if given."""
    found = AuditEvent.select().order_by(AuditEvent.id.desc())
    if filters["actor"]:
        found = found.where(AuditEvent.actor == filters["actor"])
    if filters["action"]:
        found = found.where(AuditEvent.action == filters["action"])
    if filters["date_from"]:
        found = found.where(AuditEvent.at >= datetime.combine(filters["date_from"], time()))
    if filters["date_to"]:
        end = datetime.combine(filters["date_to"], time()) + timedelta(days=1)
        found = found.where(AuditEvent.at < end)
    return found


def actions() -> list[str]:
    """Every action audited so far, sorted."""
    return sorted(a.action for a in AuditEvent.select(AuditEvent.action).distinct())
