"""The core settings (security of accounts, store policies, query limits)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from pacscore.config import CORE_SETTINGS
from pacscore.services import Actor, Invalid, record

if TYPE_CHECKING:
    from pacscore.app import Pacs


def core(pacs: Pacs) -> dict[str, Any]:
    """The core settings as JSON values."""
    return CORE_SETTINGS.dump(pacs.settings.core)


def update(pacs: Pacs, changes: Mapping[str, Any], actor: Actor | None = None) -> dict[str, Any]:
    """Validate and persist a change of the core settings (applied at once); audit only
    what changed. Returns every setting as JSON values."""
    before = core(pacs)
    try:
        after = CORE_SETTINGS.dump(pacs.settings.update_core(dict(changes)))
    except ValidationError as exc:
        raise Invalid.of(exc) from None
    changed = {k: after[k] for k in after if before.get(k) != after[k]}
    if changed:
        record(actor, "settings_change", target="core", changes=changed)
    return after
