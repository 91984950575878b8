"""Console pages of plugins: installed, state (loaded, failed with the error),
enable/disable, and a settings form generated from the plugin's schema."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.services import Invalid
from pacscore.services import plugins as plugin_service
from pacscore.web.common import actor, get_pacs
from pacscore.web.forms import display_values, form_fields, parse_form
from pacscore.web.security import require_right

bp = Blueprint("plugins", __name__, url_prefix="/plugins")


@bp.get("/")
@require_right("manage_plugins")
def index():
    pacs = get_pacs()
    plugins = [plugin_service.describe(pacs, info) for info in pacs.hooks.list()]
    failures = plugin_service.failures(20)
    return render_template("plugins.html", plugins=plugins, failures=failures)


@bp.post("/<name>/enable")
@require_right("manage_plugins")
def enable(name: str):
    return _switch(name, True)


@bp.post("/<name>/disable")
@require_right("manage_plugins")
def disable(name: str):
    return _switch(name, False)


def _switch(name: str, enabled: bool):
    info = plugin_service.get(get_pacs(), name)
    try:
        plugin_service.set_enabled(get_pacs(), info, enabled, actor())
    except Invalid as exc:
        flash(" ".join(exc.errors["enabled"]), "error")
        return redirect(url_for("plugins.index"))
    if info.error:
        flash(f"Plugin {name} failed to load: {info.error}", "error")
    else:
        flash(
            f"Plugin {name} {'enabled' if enabled else 'disabled'}; its pages and background "
            "workers follow at the next restart.",
            "success",
        )
    return redirect(url_for("plugins.index"))


@bp.route("/<name>/settings", methods=["GET", "POST"])
@require_right("manage_plugins")
def settings(name: str):
    pacs = get_pacs()
    info = plugin_service.get(pacs, name)
    schema = plugin_service.settings_schema(pacs, name)
    specs = form_fields(schema)
    errors = {}
    shown = schema.dump(pacs.plugin_settings(name))
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            plugin_service.save_settings(pacs, name, data, actor())
        except Invalid as exc:
            errors, shown = exc.errors, data
        else:
            flash(f"Settings of {name} saved; they apply now.", "success")
            return redirect(url_for("plugins.settings", name=name))
    return render_template(
        "form.html",
        title=f"Settings of {info.name}",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("plugins.index"),
    )
