"""The plugin's table: deliveries per instance (declared to the core by ``database_models``)."""

from __future__ import annotations

from peewee import CharField, DateTimeField, IntegerField

from pacscore.db import utcnow
from pacscore.models import BaseModel


class RouterDelivery(BaseModel):
    """One instance to deliver (or delivered) to a node by a router rule.

    Written when a send is queued (``state`` ``queued``, ``job_id`` the send
    job), marked ``sent`` once the node accepted it: a rule never sends the
    same instance to the same node twice unless forced, a retried job sends
    only what is still queued, and queued rows hold their study back from
    automatic purge (``retention_holds``).
    """

    rule = CharField(max_length=128)
    node = CharField(max_length=64)
    sop_uid = CharField(max_length=64)
    study_uid = CharField(max_length=64, index=True)
    state = CharField(max_length=16, default="queued")
    job_id = IntegerField(default=0, index=True)
    updated = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("rule", "node", "sop_uid"), True),)


MODELS = [RouterDelivery]
