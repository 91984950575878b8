"""Console pages of users and profiles (the rights matrix)."""

from __future__ import annotations

import json

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.models import Profile, User
from pacscore.password_reset import request_reset
from pacscore.rights import RIGHTS
from pacscore.services import Conflict, Invalid, Taken
from pacscore.services import users as user_service
from pacscore.services.schemas import UserSchema
from pacscore.web.common import actor, get_pacs
from pacscore.web.forms import display_values, form_fields, parse_form, schema_defaults
from pacscore.web.security import client_ip, current_user, require_right

bp = Blueprint("users", __name__, url_prefix="/users")
USER_SCHEMA = UserSchema()


# -- users ------------------------------------------------------------------------------


@bp.get("/")
@require_right("manage_users")
def index():
    return render_template("users.html", users=user_service.users(), services=json.loads)


def _user_form(user: User | None):
    specs = form_fields(USER_SCHEMA, choices={"profile": user_service.profile_names()})
    errors = {}
    if request.method == "POST":
        data = parse_form(specs, request.form)
        try:
            partial = user is not None
            saved = user_service.save_user(get_pacs(), user, data, actor(), partial=partial)
        except Invalid as exc:
            errors, shown = exc.errors, data
        else:
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
    return _user_form(user_service.get_user(user_id))


@bp.post("/<int:user_id>/unlock")
@require_right("manage_users")
def unlock_user(user_id: int):
    user = user_service.get_user(user_id)
    user_service.unlock_user(user, actor())
    flash(f"User {user.login} unlocked.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/reset-link")
@require_right("manage_users")
def send_reset_link(user_id: int):
    user = user_service.get_user(user_id)
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
    user = user_service.get_user(user_id)
    try:
        user_service.delete_user(user, actor())
    except Conflict:
        flash("You cannot delete your own account.", "error")
    else:
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
        grants = [(p, [r for r in rights if request.form.get(f"{p.id}:{r}")]) for p in rows]
        try:
            user_service.set_rights(grants, actor())
        except Invalid as exc:
            flash(exc.message, "error")
            return redirect(url_for("users.profiles"))
        flash("Rights saved.", "success")
        return redirect(url_for("users.profiles"))
    return render_template(
        "profiles.html", profiles=rows, rights=rights, descriptions=RIGHTS, loads=json.loads
    )


@bp.post("/profiles/new")
@require_right("manage_users")
def create_profile():
    try:
        profile = user_service.create_profile(
            {"name": request.form.get("name", "").strip()}, actor()
        )
    except Taken:
        flash("A profile with this name exists.", "error")
    except Invalid as exc:
        flash(f"Invalid profile: {exc.errors}", "error")
    else:
        flash(f"Profile {profile.name} created.", "success")
    return redirect(url_for("users.profiles"))


@bp.route("/profiles/<int:profile_id>/delete", methods=["GET", "POST"])
@require_right("manage_users")
def delete_profile_page(profile_id: int):
    profile = user_service.get_profile(profile_id)
    in_use = User.select().where(User.profile == profile.name).count()
    if request.method == "POST" and request.form.get("confirm") == "yes":
        try:
            moved = user_service.delete_profile(profile, request.form.get("replacement"), actor())
        except Invalid as exc:
            flash(exc.message, "error")
            return redirect(url_for("users.profiles"))
        flash(f"Profile {profile.name} deleted; {moved} user(s) moved.", "success")
        return redirect(url_for("users.profiles"))
    others = [name for name in user_service.profile_names() if name != profile.name]
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
