"""Service filters: named criteria on studies that users' ``services`` name.

A filter that users hold cannot be deleted or renamed: their names would stop
designating it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peewee import IntegrityError

from pacscore.db import db
from pacscore.models import ServiceFilter, User
from pacscore.services import Actor, Conflict, Invalid, NotFound, Taken, load, record
from pacscore.services.schemas import ServiceFilterChangeSchema, ServiceFilterSchema
from pacscore.users import user_services

CRITERIA = ("institution", "requesting_service", "modality", "institution_or_service")


def get(filter_id: int) -> ServiceFilter:
    found = ServiceFilter.get_or_none(ServiceFilter.id == filter_id)
    if found is None:
        raise NotFound("no such service filter")
    return found


def listed() -> list[ServiceFilter]:
    return list(ServiceFilter.select().order_by(ServiceFilter.name))


def holders() -> dict[str, list[str]]:
    """Filter name (case-folded) -> logins of the users holding it."""
    result: dict[str, list[str]] = {}
    for user in User.select(User.login, User.services).order_by(User.login):
        for name in user_services(user):
            result.setdefault(name.strip().casefold(), []).append(user.login)
    return result


def save(
    target: ServiceFilter | None,
    data: Mapping[str, Any],
    actor: Actor | None = None,
    partial: bool = False,
) -> ServiceFilter:
    """Create (``target`` None) or change a filter (with ``partial``, only the fields given)."""
    schema = ServiceFilterChangeSchema() if partial else ServiceFilterSchema()
    values = load(schema, data, partial=partial)
    created = target is None
    target = target or ServiceFilter()
    values = {k: v.strip() if isinstance(v, str) else v for k, v in values.items()}
    merged = {name: values.get(name, getattr(target, name)) for name in CRITERIA}
    if not any(merged.values()):
        raise Invalid({"_schema": ["give at least one criterion"]})
    name = values.get("name", target.name)
    taken = Taken({"name": ["a service filter with this name exists"]})
    clash = ServiceFilter.select().where(ServiceFilter.id != (target.id or 0))
    if any(other.name.casefold() == name.casefold() for other in clash):
        raise taken
    if target.id and name.casefold() != target.name.casefold():
        users = holders().get(target.name.casefold())
        if users:
            raise Invalid(
                {"name": [f"held by {', '.join(users)}: a filter in use cannot be renamed"]}
            )
    for key, value in values.items():
        setattr(target, key, value)
    try:
        with db.atomic():
            target.save()
    except IntegrityError:
        raise taken from None
    record(actor, "service_filter_save", target=target.name, created=created)
    return target


def delete(target: ServiceFilter, actor: Actor | None = None) -> None:
    """Delete a filter that no user holds (else :class:`Conflict`)."""
    users = holders().get(target.name.casefold())
    if users:
        raise Conflict(f"held by {', '.join(users)}: remove it from their services first")
    target.delete_instance()
    record(actor, "service_filter_delete", target=target.name)
