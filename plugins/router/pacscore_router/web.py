"""Console pages and API routes of the router: rules (list, create, edit, enable,
disable, delete) and "resend a study", thin over :mod:`pacscore_router.rules`.

Rules are configuration: ``configure``.  Resending pushes a study to nodes, so it
needs ``send``, the right to send a study by hand.  The sends are jobs: their
outcome is on the core Jobs page.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import Schema, ValidationError, fields, validate

from pacscore.models import Node
from pacscore.web.common import (
    InvalidInput,
    check_uid,
    get_pacs,
    json_body,
    load_json,
    record,
)
from pacscore.web.openapi import doc
from pacscore.web.security import require_right
from pacscore_router import rules as ops
from pacscore_router.matching import ALL, ANY, NONE
from pacscore_router.settings import ACTION_TYPES, PUSH, RuleSchema

RULES_RIGHT = "configure"
RESEND_RIGHT = "send"
BLANK_ACTION_ROWS = 2
RULE_SCHEMA = RuleSchema()


class RuleEnabledSchema(Schema):
    enabled = fields.Boolean(required=True)


class RuleResendSchema(Schema):
    study_uid = fields.String(
        required=True, validate=[validate.Length(max=64), validate.Regexp(r"^[0-9]+(\.[0-9]+)*$")]
    )


class RuleListSchema(Schema):
    rules = fields.List(fields.Nested(RuleSchema), metadata={"description": "by priority"})


class ResendJobsSchema(Schema):
    job_ids = fields.List(fields.Integer(), metadata={"description": "one send job per PUSH node"})


# -- rule <-> form ----------------------------------------------------------------------


def parse_items(text: str) -> list[dict[str, str]]:
    """One filter item a line: ``TAG PATTERN`` (a missing pattern means ``*``)."""
    items = []
    for line in text.splitlines():
        if line.strip():
            tag, _, pattern = line.strip().partition(" ")
            items.append({"tag": tag, "pattern": pattern.strip() or "*"})
    return items


def rule_from_form(form) -> tuple[dict[str, Any], list[int]]:
    """The rule a form describes, and the form row of each of its actions."""
    start, end = form.get("time_start", "").strip(), form.get("time_end", "").strip()
    filters = {
        "combine": form.get("combine", ALL),
        "items": parse_items(form.get("items", "")),
        "calling_ae": form.get("calling_ae", "").strip(),
        "called_ae": form.get("called_ae", "").strip(),
        "modality": form.get("modality", "").strip(),
        "time_window": {"start": start, "end": end} if start or end else None,
    }
    actions, rows = [], []
    for row in range(int(form.get("action_rows", "0") or 0)):
        kind = form.get(f"action-{row}-type", "")
        if kind:
            actions.append({
                "type": kind,
                "node": form.get(f"action-{row}-node", ""),
                "priors": form.get(f"action-{row}-priors", ""),
                "per_instance": bool(form.get(f"action-{row}-per_instance")),
            })  # fmt: skip
            rows.append(row)
    rule = {
        "name": form.get("name", "").strip(),
        "enabled": bool(form.get("enabled")),
        "priority": form.get("priority", "100"),
        "filters": filters,
        "actions": actions,
    }
    return rule, rows


def form_values(rule: dict[str, Any]) -> dict[str, Any]:
    filters = rule.get("filters") or {}
    window = filters.get("time_window") or {}
    items = "\n".join(f"{i['tag']} {i.get('pattern', '*')}" for i in filters.get("items") or [])
    return {
        "name": rule.get("name", ""),
        "enabled": rule.get("enabled", True),
        "priority": rule.get("priority", 100),
        "combine": filters.get("combine", ALL),
        "items": items,
        "calling_ae": filters.get("calling_ae", ""),
        "called_ae": filters.get("called_ae", ""),
        "modality": filters.get("modality", ""),
        "time_start": window.get("start", ""),
        "time_end": window.get("end", ""),
        "actions": list(rule.get("actions") or []),
    }


def _messages(value) -> list[str]:
    if isinstance(value, dict):
        return [m for v in value.values() for m in _messages(v)]
    return [str(m) for m in value] if isinstance(value, list) else [str(value)]


def form_errors(errors: dict, rows: list[int]) -> dict[str, list[str]]:
    """RuleSchema's nested messages keyed by the form field they belong to."""
    shown: dict[str, list[str]] = {}
    for key in ("name", "priority", "enabled"):
        if key in errors:
            shown[key] = _messages(errors[key])
    filters = errors.get("filters") or {}
    for key in ("combine", "calling_ae", "called_ae", "modality"):
        if key in filters:
            shown[key] = _messages(filters[key])
    for index, item in (filters.get("items") or {}).items():
        line = f"line {int(index) + 1}: " if isinstance(index, int) else ""
        shown.setdefault("items", []).extend(line + m for m in _messages(item))
    window = filters.get("time_window") or {}
    for key in ("start", "end"):
        if isinstance(window, dict) and key in window:
            shown[f"time_{key}"] = _messages(window[key])
    actions = errors.get("actions") or {}
    if isinstance(actions, list):
        shown["actions"] = _messages(actions)
    else:
        for index, action in actions.items():
            for field, messages in action.items():
                shown[f"action-{rows[index]}-{field}"] = _messages(messages)
    return shown


def save(rule: dict[str, Any], replace: str | None) -> dict[str, Any]:
    """Save a new rule (``replace`` None) or replace one; ValidationError says why not."""
    RULE_SCHEMA.load(rule)  # field errors first, so they can be placed next to the fields
    if replace is None and ops.get_rule(get_pacs(), rule["name"]) is not None:
        raise ValidationError({"name": ["a rule with this name already exists"]})
    saved = ops.save_rule(get_pacs(), rule, replace=replace)
    record("router_rule_save", target=saved["name"], created=replace is None)
    return saved


def set_errors(exc: ValidationError) -> list[str]:
    """Errors of the whole rule set (duplicate name, unknown node) as plain messages."""
    return _messages(exc.normalized_messages())


# -- pages ------------------------------------------------------------------------------


def filters_summary(rule: dict[str, Any]) -> str:
    filters = rule.get("filters") or {}
    parts = [f"{i['tag']}={i['pattern']}" for i in filters.get("items") or []]
    summary = f"{filters.get('combine', ALL)}({', '.join(parts)})" if parts else ""
    for key in ("calling_ae", "called_ae", "modality"):
        if filters.get(key):
            summary += f" {key}={filters[key]}"
    window = filters.get("time_window")
    if window:
        summary += f" {window['start']}-{window['end']}"
    return summary.strip() or "every study"


def action_summary(action: dict[str, Any]) -> str:
    if action["type"] == PUSH:
        return f"PUSH {'per instance' if action.get('per_instance') else 'per study'}"
    return f"{action['type']} {action.get('priors', '')}".strip()


def rule_or_404(name: str) -> dict[str, Any]:
    rule = ops.get_rule(get_pacs(), name)
    if rule is None:
        abort(404, "no such rule")
    return rule


def _editor(original: dict[str, Any] | None):
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    if request.method == "POST":
        rule, rows = rule_from_form(request.form)
        try:
            save(rule, original["name"] if original else None)
        except ValidationError as exc:
            messages = exc.normalized_messages()
            if "rules" in messages:
                general = set_errors(exc)
            else:
                errors = form_errors(messages, rows)
                general = [] if errors else _messages(messages)
            values = form_values(rule)
        else:
            flash(f"Rule {rule['name']} saved.", "success")
            return redirect(url_for("router.index"))
    else:
        values = form_values(original or {})
    rows = len(values["actions"]) + BLANK_ACTION_ROWS
    values["actions"] += [{}] * BLANK_ACTION_ROWS
    return render_template(
        "router/rule.html",
        original=original,
        values=values,
        errors=errors,
        general=general,
        rows=rows,
        combines=[ANY, ALL, NONE],
        action_types=ACTION_TYPES,
        nodes=[n.name for n in Node.select(Node.name).order_by(Node.name)],
    )


def make_page_blueprint() -> Blueprint:
    bp = Blueprint("router", __name__, url_prefix="/router", template_folder="console_templates")

    @bp.get("/")
    @require_right(RULES_RIGHT)
    def index():
        rules = ops.list_rules(get_pacs())
        return render_template(
            "router/index.html", rules=rules, filters_summary=filters_summary,
            action_summary=action_summary,
        )  # fmt: skip

    @bp.route("/new", methods=["GET", "POST"])
    @require_right(RULES_RIGHT)
    def create():
        return _editor(None)

    @bp.route("/edit", methods=["GET", "POST"])
    @require_right(RULES_RIGHT)
    def edit():
        return _editor(rule_or_404(request.args.get("name", "")))

    @bp.post("/enabled")
    @require_right(RULES_RIGHT)
    def enabled():
        name, on = request.form.get("name", ""), request.form.get("enabled") == "yes"
        if not ops.set_rule_enabled(get_pacs(), name, on):
            abort(404, "no such rule")
        record("router_rule_enable" if on else "router_rule_disable", target=name)
        flash(f"Rule {name} {'enabled' if on else 'disabled'}.", "success")
        return redirect(url_for("router.index"))

    @bp.route("/delete", methods=["GET", "POST"])
    @require_right(RULES_RIGHT)
    def delete():
        name = rule_or_404(request.values.get("name", ""))["name"]
        if request.method == "POST" and request.form.get("confirm") == "yes":
            ops.delete_rule(get_pacs(), name)
            record("router_rule_delete", target=name)
            flash(f"Rule {name} deleted.", "success")
            return redirect(url_for("router.index"))
        return render_template(
            "confirm.html", title=f"Delete rule {name}",
            question=f"Delete the routing rule {name}? Sends already queued still run.",
            action=url_for("router.delete"), hidden={"name": name}, button="Delete",
            cancel=url_for("router.index"),
        )  # fmt: skip

    @bp.post("/resend")
    @require_right(RESEND_RIGHT)
    def resend():
        name = rule_or_404(request.form.get("rule", ""))["name"]
        study_uid = check_uid(request.form.get("study_uid", "").strip())
        jobs = ops.resend_study(get_pacs(), name, study_uid)
        record("router_resend", target=study_uid, rule=name, jobs=jobs)
        if jobs:
            flash(f"Study {study_uid}: {len(jobs)} send job(s) queued ({name}); "
                  "see the Jobs page.", "success")  # fmt: skip
        else:
            flash(f"Study {study_uid}: nothing to send (unknown study or no PUSH action).",
                  "error")  # fmt: skip
        return redirect(url_for("router.index"))

    return bp


# -- API --------------------------------------------------------------------------------


def _api_save(rule: Any, replace: str | None) -> dict[str, Any]:
    if not isinstance(rule, dict):
        raise InvalidInput({"_body": ["a JSON object is expected"]})
    try:
        return save(rule, replace)
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None


def make_api_blueprint() -> Blueprint:
    bp = Blueprint("router_api", __name__, url_prefix="/api/v1/router")

    @bp.get("/rules")
    @require_right(RULES_RIGHT)
    @doc("Routing rules", response=RuleListSchema)
    def rules():
        return jsonify(rules=ops.list_rules(get_pacs()))

    @bp.post("/rules")
    @require_right(RULES_RIGHT)
    @doc("Add a rule", body=RuleSchema, response=RuleSchema, status=201)
    def create():
        return jsonify(_api_save(json_body(), None)), 201

    @bp.get("/rules/<path:name>")
    @require_right(RULES_RIGHT)
    @doc("One rule", response=RuleSchema)
    def get(name: str):
        return jsonify(rule_or_404(name))

    @bp.put("/rules/<path:name>")
    @require_right(RULES_RIGHT)
    @doc("Replace a rule (a new name renames it)", body=RuleSchema, response=RuleSchema)
    def replace(name: str):
        rule_or_404(name)
        return jsonify(_api_save(json_body(), name))

    @bp.patch("/rules/<path:name>")
    @require_right(RULES_RIGHT)
    @doc("Enable or disable a rule", body=RuleEnabledSchema, partial=False, response=RuleSchema)
    def patch(name: str):
        rule_or_404(name)
        on = load_json(RuleEnabledSchema())["enabled"]
        ops.set_rule_enabled(get_pacs(), name, on)
        record("router_rule_enable" if on else "router_rule_disable", target=name)
        return jsonify(rule_or_404(name))

    @bp.delete("/rules/<path:name>")
    @require_right(RULES_RIGHT)
    @doc("Delete a rule (sends already queued still run)", status=204)
    def delete(name: str):
        if not ops.delete_rule(get_pacs(), name):
            abort(404, "no such rule")
        record("router_rule_delete", target=name)
        return "", 204

    @bp.post("/rules/<path:name>/resend")
    @require_right(RESEND_RIGHT)
    @doc("Send a study again to the rule's PUSH nodes (background jobs)", body=RuleResendSchema,
         response=ResendJobsSchema, status=202)  # fmt: skip
    def resend(name: str):
        rule_or_404(name)
        study_uid = check_uid(load_json(RuleResendSchema())["study_uid"])
        jobs = ops.resend_study(get_pacs(), name, study_uid)
        record("router_resend", target=study_uid, rule=name, jobs=jobs)
        return jsonify(job_ids=jobs), 202

    return bp


def make_blueprints() -> list[Blueprint]:
    return [make_page_blueprint(), make_api_blueprint()]
