"""Console pages of users and profiles (the rights matrix)."""

from __future__ import annotations

import json

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError
from peewee import IntegrityError

from pacscore.models import Profile, User, WebSession, db
from pacscore.password_reset import request_reset
from pacscore.rights import RIGHTS, profile_rights
from pacscore.users import set_password, unlock
from pacscore.web.common import get_pacs, record
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.schemas import ProfileSchema, UserSchema
from pacscore.web.security import client_ip, current_user, require_right

bp = Blueprint("users", __name__, url_prefix="/users")
USER_SCHEMA = UserSchema()


def profile_names() -> list[str]:
    return [p.name for p in Profile.select(Profile.name).order_by(Profile.name)]


def user_or_404(user_id: int) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        abort(404, "no such user")
    return user


def profile_or_404(profile_id: int) -> Profile:
    profile = Profile.get_or_none(Profile.id == profile_id)
    if profile is None:
        abort(404, "no such profile")
    return profile


def save_user(user: User | None, values: dict) -> User:
    """Create or update an account from validated values (password optional on update)."""
    if values.get("profile") and values["profile"] not in profile_names():
        raise ValidationError({"profile": ["unknown profile"]})
    if user is not None and user.id == current_user().id:
        _keep_own_access(values)
    password = values.pop("password", None)
    if user is None and not password:
        raise ValidationError({"password": ["a new account needs a password"]})
    target = user or User()
    for name, value in values.items():
        setattr(target, name, json.dumps(value) if name == "services" else value)
    if target.status == "active":
        target.failed_attempts, target.locked_until = 0, None
    try:
        with db.atomic():
            target.save()
            if password:
                set_password(get_pacs(), target, password)
    except IntegrityError:
        raise ValidationError({"login": ["this login is taken"]}) from None
    except ValueError as exc:
        raise ValidationError({"password": [str(exc)]}) from None
    if target.status != "active":
        WebSession.delete().where(WebSession.user == target).execute()
    return target


def _keep_own_access(values: dict) -> None:
    """An administrator cannot lock themselves out of user management."""
    if values.get("status", "active") != "active":
        raise ValidationError({"status": ["you cannot lock or disable your own account"]})
    if "profile" in values and "manage_users" not in profile_rights(values["profile"]):
        raise ValidationError({"profile": ["this profile would remove your right to manage users"]})


def check_own_profile_keeps_user_management(profile: Profile, rights: list[str]) -> None:
    if profile.name == current_user().profile and "manage_users" not in rights:
        raise ValidationError({"rights": ["your own profile must keep manage_users"]})


def delete_profile(profile: Profile, replacement: str | None) -> int:
    """Delete a profile; its users move to ``replacement`` (required if any)."""
    if profile.builtin:
        raise ValidationError({"_schema": ["a default profile cannot be deleted"]})
    users = User.select().where(User.profile == profile.name)
    if users.exists():
        if not replacement or replacement == profile.name:
            raise ValidationError({"replacement": ["the profile is in use: choose a replacement"]})
        if replacement not in profile_names():
            raise ValidationError({"replacement": ["unknown profile"]})
    with db.atomic():
        moved = User.update(profile=replacement).where(User.profile == profile.name).execute()
        profile.delete_instance()
    return moved


# -- users ------------------------------------------------------------------------------


@bp.get("/")
@require_right("manage_users")
def index():
    users = list(User.select().order_by(User.login))
    return render_template("users.html", users=users, services=json.loads)


def _user_form(user: User | None):
    specs = form_fields(USER_SCHEMA, choices={"profile": profile_names()})
    errors = {}
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            saved = save_user(user, USER_SCHEMA.load(data, partial=user is not None))
        except ValidationError as exc:
            errors, shown = exc.normalized_messages(), data
        else:
            record("user_save", target=saved.login, created=user is None)
            flash(f"User {saved.login} saved.", "success")
            return redirect(url_for("users.index"))
    else:
        shown = USER_SCHEMA.dump(user) if user else schema_defaults(USER_SCHEMA)
    return render_template(
        "form.html",
        title=f"User {user.login}" if user else "New user",
        intro="Services: names of service filters, comma-separated; the user then sees only "
        "the studies one of them matches (a name without a filter: institution or requesting "
        "service equal to it). Leave the password empty to keep it.",
        specs=specs,
        values=display_values(shown, specs),
        errors=errors,
        cancel=url_for("users.index"),
    )


@bp.route("/new", methods=["GET", "POST"])
@require_right("manage_users")
def create():
    return _user_form(None)


@bp.route("/<int:user_id>", methods=["GET", "POST"])
@require_right("manage_users")
def edit(user_id: int):
    return _user_form(user_or_404(user_id))


@bp.post("/<int:user_id>/unlock")
@require_right("manage_users")
def unlock_user(user_id: int):
    user = user_or_404(user_id)
    unlock(user)
    record("user_unlock", target=user.login)
    flash(f"User {user.login} unlocked.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/reset-link")
@require_right("manage_users")
def send_reset_link(user_id: int):
    user = user_or_404(user_id)
    outcome = request_reset(
        get_pacs(), user.login, request.host_url, actor=current_user().login, source_ip=client_ip()
    )
    if outcome == "sent":
        flash(f"A reset link was mailed to {user.login} ({user.email}).", "success")
    else:
        flash(f"No reset link for {user.login}: {outcome}.", "error")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/delete")
@require_right("manage_users")
def delete(user_id: int):
    user = user_or_404(user_id)
    if user.id == current_user().id:
        flash("You cannot delete your own account.", "error")
    else:
        user.delete_instance()
        record("user_delete", target=user.login)
        flash(f"User {user.login} deleted.", "success")
    return redirect(url_for("users.index"))


# -- profiles -------------------------------------------------------------------------------


def _all_rights(profiles: list[Profile]) -> list[str]:
    """Core rights first, then any a plugin introduced through a profile."""
    extra = {r for p in profiles for r in json.loads(p.rights)} - set(RIGHTS)
    return list(RIGHTS) + sorted(extra)


@bp.route("/profiles", methods=["GET", "POST"])
@require_right("manage_users")
def profiles():
    rows = list(Profile.select().order_by(Profile.id))
    rights = _all_rights(rows)
    if request.method == "POST":
        grants = {p.id: [r for r in rights if request.form.get(f"{p.id}:{r}")] for p in rows}
        try:
            for profile in rows:
                check_own_profile_keeps_user_management(profile, grants[profile.id])
        except ValidationError as exc:
            flash(" ".join(exc.normalized_messages()["rights"]), "error")
            return redirect(url_for("users.profiles"))
        with db.atomic():
            for profile in rows:
                granted = grants[profile.id]
                if json.loads(profile.rights) != granted:
                    profile.rights = json.dumps(granted)
                    profile.save()
                    record("profile_rights", target=profile.name, rights=granted)
        flash("Rights saved.", "success")
        return redirect(url_for("users.profiles"))
    return render_template(
        "profiles.html", profiles=rows, rights=rights, descriptions=RIGHTS, loads=json.loads
    )


@bp.post("/profiles/new")
@require_right("manage_users")
def create_profile():
    try:
        values = ProfileSchema().load({"name": request.form.get("name", "").strip()})
        Profile.create(name=values["name"], rights="[]")
    except ValidationError as exc:
        flash(f"Invalid profile: {exc.normalized_messages()}", "error")
    except IntegrityError:
        flash("A profile with this name exists.", "error")
    else:
        record("profile_create", target=values["name"])
        flash(f"Profile {values['name']} created.", "success")
    return redirect(url_for("users.profiles"))


@bp.route("/profiles/<int:profile_id>/delete", methods=["GET", "POST"])
@require_right("manage_users")
def delete_profile_page(profile_id: int):
    profile = profile_or_404(profile_id)
    in_use = User.select().where(User.profile == profile.name).count()
    if request.method == "POST" and request.form.get("confirm") == "yes":
        try:
            moved = delete_profile(profile, request.form.get("replacement"))
        except ValidationError as exc:
            flash(" ".join(str(m) for v in exc.normalized_messages().values() for m in v), "error")
            return redirect(url_for("users.profiles"))
        record("profile_delete", target=profile.name, users_moved=moved)
        flash(f"Profile {profile.name} deleted; {moved} user(s) moved.", "success")
        return redirect(url_for("users.profiles"))
    others = [name for name in profile_names() if name != profile.name]
    return render_template(
        "confirm.html",
        title=f"Delete profile {profile.name}",
        question=f"{in_use} user(s) have this profile."
        + (" Choose the profile they get instead." if in_use else ""),
        action=url_for("users.delete_profile_page", profile_id=profile.id),
        choices=others if in_use else None,
        choices_name="replacement",
        choices_label="Replacement profile",
        button="Delete",
        cancel=url_for("users.profiles"),
    )
