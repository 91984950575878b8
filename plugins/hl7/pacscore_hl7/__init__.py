"""pacscore-hl7: HL7 v2 orders and ADT over MLLP feed the Modality Worklist.

Started by ``on_startup`` on ``pacs.config.hl7_port`` (``--hl7-port``,
default 2575) and stopped by ``on_shutdown``.  See the README for the
mapping, the ACK rules and the message log.
"""

from __future__ import annotations

import logging

from marshmallow import Schema, ValidationError, fields, validate, validates

from pacscore import hookimpl
from pacscore.scheduler import PeriodicTask
from pacscore_hl7.mllp import MAX_FRAME, MllpServer
from pacscore_hl7.models import MODELS
from pacscore_hl7.orders import DEFAULT_MAPPING, parse_mapping
from pacscore_hl7.pages import make_blueprint
from pacscore_hl7.service import (
    forget_old_messages,
    process_frame,
    process_oversized,
    recent,
    replay,
)

__all__ = ["recent", "replay"]

log = logging.getLogger(__name__)

_server: MllpServer | None = None


class Hl7Settings(Schema):
    mapping = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        load_default=lambda: dict(DEFAULT_MAPPING),
        metadata={
            "help": "worklist field -> HL7 locations SEG-F[.C[.S]], alternatives separated "
            "by '|' (the first non-empty wins); fields not given keep their default"
        },
    )
    application_name = fields.String(
        load_default="PACSCORE",
        validate=validate.Length(min=1, max=64),
        metadata={"help": "MSH-3 of our ACKs when the message's MSH-5 is empty"},
    )
    log_retention_days = fields.Integer(
        load_default=90,
        validate=validate.Range(min=0),
        metadata={"help": "delete logged messages older than this (0: keep them all)"},
    )
    idle_timeout_seconds = fields.Integer(
        load_default=600,
        validate=validate.Range(min=5),
        metadata={"help": "close a connection silent this long (applies to new connections)"},
    )
    max_message_bytes = fields.Integer(
        load_default=MAX_FRAME,
        validate=validate.Range(min=4096, max=64 * 1024 * 1024),
        metadata={
            "help": "a larger message is refused (AR) and not kept in memory; read when the "
            "listener starts"
        },
    )

    @validates("mapping")
    def _valid_mapping(self, value, **_kwargs) -> None:
        try:
            parse_mapping(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc


@hookimpl
def database_models():
    return MODELS


@hookimpl
def settings_schema():
    return Hl7Settings()


@hookimpl
def periodic_tasks(pacs):
    return [PeriodicTask("forget_old_hl7_messages", 3600, forget_old_messages)]


@hookimpl
def on_startup(pacs):
    global _server
    settings = pacs.plugin_settings("hl7")
    limit = settings.get("max_message_bytes", MAX_FRAME)
    _server = MllpServer(
        (pacs.config.host, pacs.config.hl7_port),
        lambda payload, peer: process_frame(pacs, payload, peer),
        idle_timeout=settings.get("idle_timeout_seconds", 600),
        max_frame=limit,
        refuse=lambda head, size, peer: process_oversized(pacs, head, size, limit, peer),
    )
    _server.start()
    log.info("HL7 MLLP listening on %s:%d", pacs.config.host, pacs.config.hl7_port)


@hookimpl
def on_shutdown(pacs):
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@hookimpl
def register_blueprints(pacs, app):
    from pacscore.web.menu import add_menu_item
    from pacscore_hl7.pages import RIGHT

    app.register_blueprint(make_blueprint())
    add_menu_item(app, "HL7", "hl7.index", RIGHT)
