"""The audit trail: one row per login, export, deletion and configuration change."""

from __future__ import annotations

import json
from typing import Any

from pacscore.db import connection
from pacscore.models import AuditEvent


def record(action: str, actor: str, target: str = "", source_ip: str = "", **details: Any) -> None:
    """Append an audit event; ``details`` must be JSON-serialisable."""
    with connection():
        AuditEvent.create(
            action=action,
            actor=actor[:128],
            target=str(target)[:255],
            source_ip=source_ip[:64],
            details=json.dumps(details, default=str),
        )
