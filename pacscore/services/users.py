"""Accounts and profiles (the rights matrix).

Rules about the actor's own account live here: an administrator cannot lock,
disable or delete their own account, nor take the right to manage users away
from themselves (through their account's profile or the profile's rights).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from peewee import IntegrityError

from pacscore.db import db
from pacscore.models import Profile, User, WebSession
from pacscore.rights import profile_rights
from pacscore.services import Actor, Conflict, Invalid, NotFound, Taken, load, record
from pacscore.services.schemas import ProfileSchema, UserSchema
from pacscore.users import set_password, unlock

if TYPE_CHECKING:
    from pacscore.app import Pacs

USER_SCHEMA = UserSchema()
PROFILE_SCHEMA = ProfileSchema()


# -- accounts ------------------------------------------------------------------------------


def get_user(user_id: int) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise NotFound("no such user")
    return user


def user_named(login: str) -> User:
    user = User.get_or_none(User.login == login)
    if user is None:
        raise NotFound(f"no user named {login!r}")
    return user


def users() -> list[User]:
    return list(User.select().order_by(User.login))


def save_user(
    pacs: Pacs,
    user: User | None,
    data: Mapping[str, Any],
    actor: Actor | None = None,
    partial: bool = False,
) -> User:
    """Create (``user`` None: a password is required) or change an account from ``data``
    (with ``partial``, only the fields given; no password keeps it)."""
    values = load(USER_SCHEMA, data, partial=partial)
    if values.get("profile") and values["profile"] not in profile_names():
        raise Invalid({"profile": ["unknown profile"]})
    if user is not None and actor is not None and actor.is_user(user):
        _keep_own_access(values)
    password = values.pop("password", None)
    if user is None and not password:
        raise Invalid({"password": ["a new account needs a password"]})
    target = user or User()
    for name, value in values.items():
        setattr(target, name, json.dumps(value) if name == "services" else value)
    if target.status == "active":
        target.failed_attempts, target.locked_until = 0, None
    try:
        with db.atomic():
            target.save()
            if password:
                set_password(pacs, target, password)
    except IntegrityError:
        raise Taken({"login": ["this login is taken"]}) from None
    except ValueError as exc:
        raise Invalid({"password": [str(exc)]}) from None
    if target.status != "active":
        WebSession.delete().where(WebSession.user == target).execute()
    record(actor, "user_save", target=target.login, created=user is None)
    return target


def _keep_own_access(values: dict) -> None:
    """An administrator cannot lock themselves out of user management."""
    if values.get("status", "active") != "active":
        raise Invalid({"status": ["you cannot lock or disable your own account"]})
    if "profile" in values and "manage_users" not in profile_rights(values["profile"]):
        raise Invalid({"profile": ["this profile would remove your right to manage users"]})


def unlock_user(user: User, actor: Actor | None = None) -> None:
    unlock(user)
    record(actor, "user_unlock", target=user.login)


def delete_user(user: User, actor: Actor | None = None) -> None:
    if actor is not None and actor.is_user(user):
        raise Conflict("you cannot delete your own account")
    user.delete_instance()
    record(actor, "user_delete", target=user.login)


# -- profiles ------------------------------------------------------------------------------


def profile_names() -> list[str]:
    return [p.name for p in Profile.select(Profile.name).order_by(Profile.name)]


def get_profile(profile_id: int) -> Profile:
    profile = Profile.get_or_none(Profile.id == profile_id)
    if profile is None:
        raise NotFound("no such profile")
    return profile


def profiles() -> list[Profile]:
    return list(Profile.select().order_by(Profile.name))


def create_profile(data: Mapping[str, Any], actor: Actor | None = None) -> Profile:
    values = load(PROFILE_SCHEMA, data)
    taken = Taken({"name": ["a profile with this name exists"]})
    if Profile.select().where(Profile.name == values["name"]).exists():
        raise taken
    try:
        profile = Profile.create(name=values["name"], rights=json.dumps(values["rights"]))
    except IntegrityError:
        raise taken from None
    record(actor, "profile_create", target=profile.name, rights=values["rights"])
    return profile


def update_profile(profile: Profile, data: Mapping[str, Any], actor: Actor | None = None) -> None:
    """Change the given fields of a profile: its rights (a profile is never renamed)."""
    values = load(PROFILE_SCHEMA, data, partial=True)
    if "name" in values and values["name"] != profile.name:
        raise Invalid({"name": ["a profile cannot be renamed"]})
    if "rights" in values:
        _keep_user_management(profile, values["rights"], actor)
        profile.rights = json.dumps(values["rights"])
        profile.save()
        record(actor, "profile_rights", target=profile.name, rights=values["rights"])


def set_rights(grants: Iterable[tuple[Profile, list[str]]], actor: Actor | None = None) -> None:
    """The rights matrix: every profile's rights at once; only the changed ones are saved
    (and audited), none if one is refused."""
    grants = list(grants)
    for profile, granted in grants:
        _keep_user_management(profile, granted, actor)
    with db.atomic():
        for profile, granted in grants:
            if json.loads(profile.rights) != granted:
                profile.rights = json.dumps(granted)
                profile.save()
                record(actor, "profile_rights", target=profile.name, rights=granted)


def _keep_user_management(profile: Profile, rights: list[str], actor: Actor | None) -> None:
    own = actor is not None and actor.user is not None and profile.name == actor.user.profile
    if own and "manage_users" not in rights:
        raise Invalid({"rights": ["your own profile must keep manage_users"]})


def delete_profile(profile: Profile, replacement: str | None, actor: Actor | None = None) -> int:
    """Delete a profile; its users move to ``replacement`` (required if any). Returns how
    many moved."""
    if profile.builtin:
        raise Invalid({"_schema": ["a default profile cannot be deleted"]})
    holders = User.select().where(User.profile == profile.name)
    if holders.exists():
        if not replacement or replacement == profile.name:
            raise Invalid({"replacement": ["the profile is in use: choose a replacement"]})
        if replacement not in profile_names():
            raise Invalid({"replacement": ["unknown profile"]})
    with db.atomic():
        moved = User.update(profile=replacement).where(User.profile == profile.name).execute()
        profile.delete_instance()
    record(actor, "profile_delete", target=profile.name, users_moved=moved)
    return moved
