"""Console page of the core settings: security, store policies, query limits."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.config import CORE_SETTINGS
from pacscore.services import Invalid
from pacscore.services import settings as settings_service
from pacscore.web.common import actor, get_pacs
from pacscore.web.forms import display_values, form_fields, parse_form
from pacscore.web.security import require_right

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.route("/", methods=["GET", "POST"])
@require_right("configure")
def index():
    specs = form_fields(CORE_SETTINGS)
    errors = {}
    shown = settings_service.core(get_pacs())
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            settings_service.update(get_pacs(), data, actor())
        except Invalid as exc:
            errors, shown = exc.errors, data
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
