"""The plugin's table: alerts' quiet periods (declared to the core by ``database_models``)."""

from __future__ import annotations

from peewee import CharField, DateTimeField, IntegerField

from pacscore.db import utcnow
from pacscore.models import BaseModel


class MailAlertSent(BaseModel):
    """When an alert (kind + storage) was last mailed: its quiet period."""

    key = CharField(max_length=255, unique=True)
    last_sent = DateTimeField(default=utcnow)
    suppressed = IntegerField(default=0)  # occurrences not mailed since last_sent


MODELS = [MailAlertSent]
