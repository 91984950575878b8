"""Console page of the core settings: security, store policies, query limits."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError

from pacscore.config import CORE_SETTINGS
from pacscore.web.common import get_pacs, record
from pacscore.web.forms import display_values, form_fields, parse_form
from pacscore.web.security import require_right

bp = Blueprint("settings", __name__, url_prefix="/settings")


def update_settings(changes: dict) -> dict:
    """Validate, persist and audit a change of the core settings (only what changed)."""
    pacs = get_pacs()
    before = CORE_SETTINGS.dump(pacs.settings.core)
    after = CORE_SETTINGS.dump(pacs.settings.update_core(changes))
    changed = {k: after[k] for k in after if before.get(k) != after[k]}
    if changed:
        record("settings_change", target="core", changes=changed)
    return after


@bp.route("/", methods=["GET", "POST"])
@require_right("configure")
def index():
    specs = form_fields(CORE_SETTINGS)
    errors = {}
    shown = CORE_SETTINGS.dump(get_pacs().settings.core)
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            update_settings(data)
        except ValidationError as exc:
            errors, shown = exc.normalized_messages(), data
        else:
            flash("Settings saved; they apply now.", "success")
            return redirect(url_for("settings.index"))
    return render_template(
        "form.html",
        title="Settings",
        intro="Security of accounts (minutes and days), store policies and query limits.",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=None,
    )
