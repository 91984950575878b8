"""Console page of the audit trail, with filters."""

from __future__ import annotations

import json
import math
from datetime import datetime, time, timedelta

from flask import Blueprint, render_template, request
from marshmallow import ValidationError

from pacscore.models import AuditEvent
from pacscore.web.common import InvalidInput
from pacscore.web.schemas import AuditQuerySchema
from pacscore.web.security import require_right

bp = Blueprint("audit", __name__, url_prefix="/audit")
QUERY = AuditQuerySchema()


def audit_query(filters: dict):
    query = AuditEvent.select().order_by(AuditEvent.id.desc())
    if filters["actor"]:
        query = query.where(AuditEvent.actor == filters["actor"])
    if filters["action"]:
        query = query.where(AuditEvent.action == filters["action"])
    if filters["date_from"]:
        query = query.where(AuditEvent.at >= datetime.combine(filters["date_from"], time()))
    if filters["date_to"]:
        end = datetime.combine(filters["date_to"], time()) + timedelta(days=1)
        query = query.where(AuditEvent.at < end)
    return query


@bp.get("/")
@require_right("view_audit")
def index():
    raw = {k: v for k, v in request.args.items() if k in QUERY.fields and v != ""}
    try:
        filters = QUERY.load(raw)
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    query = audit_query(filters)
    total = query.count()
    events = list(query.paginate(filters["page"], filters["page_size"]))
    actions = [a.action for a in AuditEvent.select(AuditEvent.action).distinct()]
    return render_template(
        "audit.html",
        events=events,
        filters=filters,
        total=total,
        page=filters["page"],
        pages=max(1, math.ceil(total / filters["page_size"])),
        actions=sorted(actions),
        args={k: v for k, v in raw.items() if k != "page"},
        loads=json.loads,
    )
