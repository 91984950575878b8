"""Rule operations as plain functions: what a console page or an API route calls.

Every change goes through ``pacs.save_plugin_settings("router", ...)``, so
it is validated by :class:`pacscore_router.settings.RouterSettings` (a
``marshmallow.ValidationError`` says what is wrong) and shared by every
process on the database.  Call them with a database connection open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacscore_router.matching import ALL, Subject, filters_match
from pacscore_router.settings import PLUGIN_NAME

if TYPE_CHECKING:
    from pacscore.app import Pacs


def ordered(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules in the order they are applied: increasing priority, then name."""
    return sorted(rules, key=lambda rule: (rule["priority"], rule["name"]))


def list_rules(pacs: Pacs) -> list[dict[str, Any]]:
    return ordered(pacs.plugin_settings(PLUGIN_NAME)["rules"])


def get_rule(pacs: Pacs, name: str) -> dict[str, Any] | None:
    return next((rule for rule in list_rules(pacs) if rule["name"] == name), None)


def _save_rules(pacs: Pacs, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return pacs.save_plugin_settings(PLUGIN_NAME, {"rules": rules})["rules"]


def save_rule(pacs: Pacs, rule: dict[str, Any], replace: str | None = None) -> dict[str, Any]:
    """Add a rule, or replace the rule named ``replace`` (a rename) or ``rule["name"]``.

    Raises ``marshmallow.ValidationError`` when the rule (or the set of
    rules) is invalid; nothing is saved then.
    """
    target = replace or rule.get("name")
    rules = [r for r in _stored_rules(pacs) if r.get("name") != target]
    saved = _save_rules(pacs, [*rules, rule])
    return next(r for r in saved if r["name"] == rule["name"])


def delete_rule(pacs: Pacs, name: str) -> bool:
    rules = _stored_rules(pacs)
    kept = [r for r in rules if r.get("name") != name]
    if len(kept) == len(rules):
        return False
    _save_rules(pacs, kept)
    return True


def set_rule_enabled(pacs: Pacs, name: str, enabled: bool) -> bool:
    rules = _stored_rules(pacs)
    found = False
    for rule in rules:
        if rule.get("name") == name:
            rule["enabled"], found = enabled, True
    if found:
        _save_rules(pacs, rules)
    return found


def _stored_rules(pacs: Pacs) -> list[dict[str, Any]]:
    from pacscore_router.settings import RouterSettings

    # the JSON form, as saved: what save_plugin_settings merges with
    return RouterSettings().dump(pacs.plugin_settings(PLUGIN_NAME))["rules"]


def resend_study(pacs: Pacs, rule_name: str, study_uid: str) -> list[int]:
    """Send a study again to every PUSH node of a rule, even if it was sent: job ids."""
    from pacscore_router.sending import queue_study
    from pacscore_router.settings import PUSH

    rule = get_rule(pacs, rule_name)
    if rule is None:
        raise LookupError(f"no rule named {rule_name!r}")
    jobs = []
    for action in rule["actions"]:
        if action["type"] == PUSH:
            job_id = queue_study(pacs, rule, action["node"], study_uid, force=True)
            if job_id:
                jobs.append(job_id)
    return jobs


def rule_matches(rule: dict[str, Any], subject: Subject) -> bool:
    """Does an enabled rule's filters match (a console's "test this rule")?"""
    return rule["enabled"] and filters_match(rule.get("filters") or {"combine": ALL}, subject)
