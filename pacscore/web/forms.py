"""HTML forms generated from marshmallow schemas (plugin settings, core settings, CRUD).

The schema stays the single source of truth: the form shows one input per
field (checkbox, number, select, text; a list is comma-separated text), and
the posted strings go back through the same schema, whose messages are shown
next to each field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema, fields, missing, validate

SECRET_WORDS = ("password", "secret", "token", "key")


@dataclass
class FormField:
    name: str
    kind: str  # checkbox, number, select, text, password, email, list
    label: str
    help: str = ""
    choices: list[str] = field(default_factory=list)
    required: bool = False


def _kind(name: str, schema_field: fields.Field) -> tuple[str, list[str]]:
    for validator in getattr(schema_field, "validators", []):
        if isinstance(validator, validate.OneOf):
            return "select", [str(c) for c in validator.choices]
    if isinstance(schema_field, fields.Boolean):
        return "checkbox", []
    if isinstance(schema_field, fields.Integer | fields.Float | fields.Decimal):
        return "number", []
    if isinstance(schema_field, fields.List) or schema_field.metadata.get("list"):
        return "list", []
    if isinstance(schema_field, fields.Email):
        return "email", []
    if any(word in name.lower() for word in SECRET_WORDS) or schema_field.metadata.get("secret"):
        return "password", []
    return "text", []


def form_fields(
    schema: Schema, exclude: tuple[str, ...] = (), choices: dict[str, list[str]] | None = None
) -> list[FormField]:
    result = []
    for name, schema_field in schema.fields.items():
        if schema_field.dump_only or name in exclude:
            continue
        kind, options = _kind(name, schema_field)
        metadata = schema_field.metadata
        if choices and name in choices:
            kind, options = "select", choices[name]
        result.append(
            FormField(
                name=name,
                kind=kind,
                label=schema_field.metadata.get("label", name.replace("_", " ")),
                help=metadata.get("help", metadata.get("description", "")),
                choices=options,
                required=schema_field.required,
            )
        )
    return result


def parse_form(specs: list[FormField], form) -> dict[str, Any]:
    """Posted strings to the values the schema loads (unchecked box: False)."""
    data: dict[str, Any] = {}
    for spec in specs:
        raw = form.get(spec.name)
        if spec.kind == "checkbox":
            data[spec.name] = raw is not None
        elif spec.kind == "list":
            text = (raw or "").replace("\n", ",")
            data[spec.name] = [part.strip() for part in text.split(",") if part.strip()]
        elif spec.kind == "password" and not raw:
            continue  # empty secret: keep the stored one
        elif raw is not None:
            data[spec.name] = raw
    return data


def display_values(values: dict[str, Any], specs: list[FormField]) -> dict[str, Any]:
    """Values as the inputs show them (lists joined, secrets never sent back)."""
    shown = {}
    for spec in specs:
        value = values.get(spec.name, "")
        if spec.kind == "list" and isinstance(value, list | tuple):
            value = ", ".join(map(str, value))
        if spec.kind == "password":
            value = ""
        shown[spec.name] = "" if value is None else value
    return shown


def schema_defaults(schema: Schema) -> dict[str, Any]:
    """The ``load_default`` of each field (a new object's form)."""
    values = {}
    for name, schema_field in schema.fields.items():
        default = schema_field.load_default
        if callable(default):
            default = default()
        values[name] = None if default is missing else default
    return values
