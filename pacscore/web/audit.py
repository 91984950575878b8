"""Console page of the audit trail, with filters."""

from __future__ import annotations

import json
import math

from flask import Blueprint, render_template, request
from marshmallow import ValidationError

from pacscore.services import audit as audit_service
from pacscore.web.common import InvalidInput
from pacscore.web.schemas import AuditQuerySchema
from pacscore.web.security import require_right

bp = Blueprint("audit", __name__, url_prefix="/audit")
QUERY = AuditQuerySchema()


@bp.get("/")
@require_right("view_audit")
def index():
    raw = {k: v for k, v in request.args.items() if k in QUERY.fields and v != ""}
    try:
        filters = QUERY.load(raw)
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None
    query = audit_service.query(filters)
    total = query.count()
    events = list(query.paginate(filters["page"], filters["page_size"]))
    return render_template(
        "audit.html",
        events=events,
        filters=filters,
        total=total,
        page=filters["page"],
        pages=max(1, math.ceil(total / filters["page_size"])),
        actions=audit_service.actions(),
        args={k: v for k, v in raw.items() if k != "page"},
        loads=json.loads,
    )
