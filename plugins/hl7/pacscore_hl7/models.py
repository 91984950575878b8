"""The plugin's table: the message log (declared to the core by ``database_models``)."""

from __future__ import annotations

from peewee import CharField, DateTimeField, IntegerField, TextField

from pacscore.db import utcnow
from pacscore.models import BaseModel


class Hl7Message(BaseModel):
    """An HL7 v2 message received, its outcome and the ACK sent."""

    # few indexes: each one is written by every message of a feed
    received_at = DateTimeField(default=utcnow)
    peer = CharField(max_length=64, default="")
    message_type = CharField(max_length=32, default="")  # e.g. ORM^O01
    control_id = CharField(max_length=64, default="", index=True)
    charset = CharField(max_length=32, default="")
    text = TextField()  # the decoded message, segments separated by CR
    outcome = CharField(max_length=2, default="")  # AA, AE, AR
    detail = TextField(default="")  # what was done, or why not
    ack = TextField(default="")
    replay_of = IntegerField(null=True)


MODELS = [Hl7Message]
