"""The router's settings: its rules and where priors come from.

Stored like any plugin's settings (``pacs.save_plugin_settings("router",
...)``, ``pacscore plugins configure router --set rules=[...]``, the console's
settings page) and validated here: unknown DICOM keywords, unknown node
names, prior syntax errors (with their position) and bad time windows are
refused with a message naming the rule.
"""

from __future__ import annotations

import json

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from pacscore.db import connection
from pacscore.models import Node, PluginState
from pacscore_router.matching import ALL, ANY, NONE, known_tag, parse_time_of_day
from pacscore_router.priors import PriorSyntaxError, parse_priors

PLUGIN_NAME = "router"
PUSH, AUTO_FETCHING, PRE_FETCHING = "PUSH", "AUTO_FETCHING", "PRE_FETCHING"
ACTION_TYPES = (PUSH, AUTO_FETCHING, PRE_FETCHING)


class FilterItemSchema(Schema):
    tag = fields.String(
        required=True, metadata={"help": "DICOM keyword (Modality) or tag ((0008,0060))"}
    )
    pattern = fields.String(
        load_default="*", metadata={"help": "* and ? wildcards; case and accents ignored"}
    )

    @validates("tag")
    def _known(self, value: str, **_) -> None:
        if not known_tag(value):
            raise ValidationError(f"unknown DICOM keyword or tag {value!r}")


class TimeWindowSchema(Schema):
    start = fields.String(required=True, metadata={"help": "HH:MM, local time"})
    end = fields.String(required=True, metadata={"help": "HH:MM; before start spans midnight"})

    @validates_schema
    def _times(self, data, **_) -> None:
        errors = {}
        for key in ("start", "end"):
            try:
                parse_time_of_day(data[key])
            except ValueError as exc:
                errors[key] = [str(exc)]
        if errors:
            raise ValidationError(errors)


class FiltersSchema(Schema):
    combine = fields.String(load_default=ALL, validate=validate.OneOf([ANY, ALL, NONE]))
    items = fields.List(fields.Nested(FilterItemSchema), load_default=list)
    calling_ae = fields.String(load_default="", metadata={"help": "pattern; empty: any"})
    called_ae = fields.String(load_default="", metadata={"help": "pattern; empty: any"})
    modality = fields.String(load_default="", metadata={"help": "pattern; empty: any"})
    time_window = fields.Nested(TimeWindowSchema, load_default=None, allow_none=True)


class ActionSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(ACTION_TYPES))
    node = fields.String(required=True, validate=validate.Length(min=1, max=64))
    priors = fields.String(
        load_default="", metadata={"help": "prior syntax, e.g. '3 MG ; 2 US' (fetching actions)"}
    )
    per_instance = fields.Boolean(
        load_default=False,
        metadata={"help": "PUSH each instance as received instead of the study once stable"},
    )

    @validates_schema
    def _priors(self, data, **_) -> None:
        if data["type"] == PUSH:
            return
        try:
            parse_priors(data.get("priors", ""))
        except PriorSyntaxError as exc:
            raise ValidationError({"priors": [str(exc)]}) from exc


class RuleSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    enabled = fields.Boolean(load_default=True)
    priority = fields.Integer(
        load_default=100, metadata={"help": "rules are applied by increasing priority"}
    )
    filters = fields.Nested(FiltersSchema, load_default=lambda: FiltersSchema().load({}))
    actions = fields.List(
        fields.Nested(ActionSchema), required=True, validate=validate.Length(min=1)
    )


def _stored_node_names() -> set[str]:
    """Node names in the settings as saved: they stay valid if the node is removed later."""
    row = PluginState.get_or_none(PluginState.name == PLUGIN_NAME)
    stored = json.loads(row.settings) if row else {}
    names = {stored.get("remote_archive_node") or ""}
    for rule in stored.get("rules") or []:
        names.update(action.get("node", "") for action in rule.get("actions") or [])
    return names


class RouterSettings(Schema):
    rules = fields.List(fields.Nested(RuleSchema), load_default=list)
    remote_archive_node = fields.String(
        load_default="",
        metadata={"help": "node to C-FIND and C-MOVE priors from (empty: local archive only)"},
    )
    route_studies_from_remote_archive = fields.Boolean(
        load_default=False,
        metadata={"help": "apply the rules to studies received from the remote archive node"},
    )
    routing_threads = fields.Integer(
        load_default=2,
        validate=validate.Range(min=1, max=32),
        metadata={"help": "parallel sends (read at server start)"},
    )
    retry_schedule = fields.List(
        fields.Integer(validate=validate.Range(min=1)),
        load_default=None,
        allow_none=True,
        metadata={"help": "seconds before each retry (default 1 h, 1 day, 2 days, 1 week)"},
    )

    @validates_schema
    def _rules(self, data, **_) -> None:
        names = [rule["name"] for rule in data.get("rules", [])]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValidationError({"rules": [f"duplicate rule name(s): {', '.join(duplicates)}"]})
        wanted = {data.get("remote_archive_node") or ""}
        for rule in data.get("rules", []):
            wanted.update(action["node"] for action in rule["actions"])
        wanted.discard("")
        if not wanted:
            return
        with connection():
            declared = {n.name for n in Node.select(Node.name).where(Node.name.in_(wanted))}
            unknown = wanted - declared
            if unknown:
                unknown -= _stored_node_names()
        if unknown:
            raise ValidationError(
                {"rules": [f"unknown node(s): {', '.join(sorted(unknown))} (declare them first)"]}
            )
