"""Console pages of plugins: installed, state (loaded, failed with the error),
enable/disable, and a settings form generated from the plugin's schema."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError

from pacscore.models import PluginFailureRecord, PluginState
from pacscore.plugins import PluginInfo
from pacscore.web.common import get_pacs, record
from pacscore.web.forms import display_values, form_fields, parse_form
from pacscore.web.security import require_right

bp = Blueprint("plugins", __name__, url_prefix="/plugins")


def plugin_or_404(name: str) -> PluginInfo:
    for info in get_pacs().hooks.list():
        if info.name == name:
            return info
    abort(404, "no such plugin")


def set_enabled(info: PluginInfo, enabled: bool) -> None:
    """Switch a plugin now and persist the choice for the next start."""
    if info.builtin:
        raise ValidationError({"enabled": ["a built-in plugin cannot be disabled"]})
    get_pacs().hooks.set_enabled(info.name, enabled)
    PluginState.insert(name=info.name, enabled=enabled).on_conflict(
        conflict_target=[PluginState.name], update={PluginState.enabled: enabled}
    ).execute()


def describe(info: PluginInfo) -> dict:
    return {
        "name": info.name,
        "version": info.version,
        "enabled": info.enabled,
        "builtin": info.builtin,
        "state": info.state,
        "error": info.error,
        "has_settings": get_pacs().hooks.settings_schema(info.name) is not None,
    }


@bp.get("/")
@require_right("manage_plugins")
def index():
    failures = PluginFailureRecord.select().order_by(PluginFailureRecord.id.desc()).limit(20)
    plugins = [describe(info) for info in get_pacs().hooks.list()]
    return render_template("plugins.html", plugins=plugins, failures=list(failures))


@bp.post("/<name>/enable")
@require_right("manage_plugins")
def enable(name: str):
    return _switch(name, True)


@bp.post("/<name>/disable")
@require_right("manage_plugins")
def disable(name: str):
    return _switch(name, False)


def _switch(name: str, enabled: bool):
    info = plugin_or_404(name)
    try:
        set_enabled(info, enabled)
    except ValidationError as exc:
        flash(" ".join(exc.normalized_messages()["enabled"]), "error")
        return redirect(url_for("plugins.index"))
    record("plugin_enable" if enabled else "plugin_disable", target=name)
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
    info = plugin_or_404(name)
    pacs = get_pacs()
    schema = pacs.hooks.settings_schema(name)
    if schema is None:
        abort(404, "this plugin is not loaded or has no settings")
    specs = form_fields(schema)
    errors = {}
    shown = schema.dump(pacs.plugin_settings(name))
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            pacs.save_plugin_settings(name, data)
        except ValidationError as exc:
            errors, shown = exc.normalized_messages(), data
        else:
            record("plugin_settings", target=name, fields=sorted(data))
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
