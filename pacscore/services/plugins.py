"""Plugins: their state, switching one on or off, and their settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError

from pacscore.models import PluginFailureRecord, PluginState
from pacscore.services import Actor, Invalid, NotFound, record

if TYPE_CHECKING:
    from pacscore.app import Pacs
    from pacscore.plugins import PluginInfo


def get(pacs: Pacs, name: str) -> PluginInfo:
    """An installed plugin (built-ins included), loaded or not."""
    for info in pacs.hooks.list():
        if info.name == name:
            return info
    raise NotFound("no such plugin")


def describe(pacs: Pacs, info: PluginInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "enabled": info.enabled,
        "builtin": info.builtin,
        "state": info.state,
        "error": info.error,
        "has_settings": pacs.hooks.settings_schema(info.name) is not None,
    }


def failures(limit: int, loading: bool = True) -> list[PluginFailureRecord]:
    """The latest recorded failures, newest first (``loading``: those of loading too)."""
    query = PluginFailureRecord.select()
    if not loading:
        query = query.where(PluginFailureRecord.hook != "load")
    return list(query.order_by(PluginFailureRecord.id.desc()).limit(limit))


def set_enabled(
    pacs: Pacs,
    info: PluginInfo,
    enabled: bool,
    actor: Actor | None = None,
    switch_now: bool = True,
) -> None:
    """Persist the choice (the other server processes follow it within a second) and, with
    ``switch_now`` (the server), switch the plugin in this process at once.

    A built-in plugin cannot be switched (:class:`Invalid`, field ``enabled``).
    """
    if info.builtin:
        raise Invalid({"enabled": ["a built-in plugin cannot be disabled"]})
    if switch_now:
        pacs.hooks.set_enabled(info.name, enabled)
        pacs.prepare_plugin_tables()  # switched on: its tables before its first event
    PluginState.insert(name=info.name, enabled=enabled).on_conflict(
        conflict_target=[PluginState.name], update={PluginState.enabled: enabled}
    ).execute()
    record(actor, "plugin_enable" if enabled else "plugin_disable", target=info.name)


def settings_schema(pacs: Pacs, name: str) -> Schema:
    """The schema of a plugin's settings (:class:`NotFound` if it is not loaded or has none)."""
    schema = pacs.hooks.settings_schema(name)
    if schema is None:
        raise NotFound("this plugin is not loaded or has no settings")
    return schema


def save_settings(
    pacs: Pacs, name: str, changes: Mapping[str, Any], actor: Actor | None = None
) -> dict[str, Any]:
    """Validate (the plugin's schema) and persist changes of its settings; they apply now."""
    try:
        saved = pacs.save_plugin_settings(name, dict(changes))
    except ValidationError as exc:
        raise Invalid.of(exc) from None
    record(actor, "plugin_settings", target=name, fields=sorted(changes))
    return saved
