"""Logging in and out, changing one's password, one's API tokens."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.models import ApiToken
from pacscore.users import log_in, set_password, verify_password
from pacscore.web import security
from pacscore.web.common import get_pacs, record
from pacscore.web.security import authenticated, client_ip, current_user, public

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    # only a path on this site: never an open redirect
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("studies.search")


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    login_name = request.form.get("login", "").strip()[:128]
    password = request.form.get("password", "")[:1024]
    result = log_in(get_pacs(), login_name, password, client_ip())
    if not result.success:
        flash(f"Login refused: {result.reason}.", "error")
        return render_template("login.html", next=request.form.get("next", "")), 401
    security.start_session(result.user, result.must_change_password)
    if result.must_change_password:
        flash("Your password has expired: choose a new one.", "warning")
        return redirect(url_for("auth.change_password"))
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
@authenticated
def logout():
    security.end_session()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@authenticated
def change_password():
    user = current_user()
    if user.auth_source != "local":
        flash(f"Your password is managed by {user.auth_source}.", "info")
        return redirect(url_for("auth.account"))
    if request.method == "POST":
        current = request.form.get("current_password", "")
        new = request.form.get("new_password", "")
        if not verify_password(current, user.password_hash):
            flash("The current password is wrong.", "error")
        elif new != request.form.get("confirm_password", ""):
            flash("The two new passwords differ.", "error")
        elif new == current:
            flash("The new password must differ from the current one.", "error")
        else:
            try:
                set_password(get_pacs(), user, new)
            except ValueError as exc:
                flash(str(exc), "error")
            else:
                security.clear_password_change()
                record("password_change", target=user.login)
                flash("Password changed.", "success")
                return redirect(url_for("studies.search"))
    return render_template("change_password.html")


@bp.get("/account")
@authenticated
def account():
    tokens = ApiToken.select().where(ApiToken.user == current_user()).order_by(ApiToken.id)
    return render_template("account.html", tokens=list(tokens), new_token=None)


@bp.post("/account/tokens")
@authenticated
def create_token():
    name = request.form.get("name", "").strip()[:128] or "token"
    token = security.new_api_token(current_user(), name)
    record("api_token_create", target=current_user().login, name=name)
    tokens = ApiToken.select().where(ApiToken.user == current_user()).order_by(ApiToken.id)
    flash("Token created: copy it now, it is not shown again.", "success")
    return render_template("account.html", tokens=list(tokens), new_token=token)


@bp.post("/account/tokens/<int:token_id>/revoke")
@authenticated
def revoke_token(token_id: int):
    deleted = (
        ApiToken.delete()
        .where((ApiToken.id == token_id) & (ApiToken.user == current_user()))
        .execute()
    )
    if deleted:
        record("api_token_revoke", target=current_user().login, token_id=token_id)
        flash("Token revoked.", "success")
    return redirect(url_for("auth.account"))


@bp.get("/")
@public
def home():
    return redirect(url_for("studies.search"))
