"""Forgotten passwords: asking for a reset link, and setting a new password through it."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from pacscore.password_reset import InvalidResetLink, complete_reset, request_reset, valid_token
from pacscore.web.common import get_pacs
from pacscore.web.security import client_ip, public

bp = Blueprint("reset", __name__, url_prefix="/password")

NEUTRAL_ANSWER = (
    "If an account with a local password and an e-mail address matches, a reset link has "
    "been mailed to it. Check your mailbox."
)


def request_base() -> str:
    """The console's base URL as the browser reached it (when ``public_url`` is empty)."""
    return request.host_url.rstrip("/")


@bp.route("/forgot", methods=["GET", "POST"])
@public
def forgot():
    if request.method == "POST":
        login_or_email = request.form.get("login", "").strip()[:255]
        if login_or_email:
            request_reset(get_pacs(), login_or_email, request_base(), source_ip=client_ip())
        # the same answer whatever happened: it never tells whether the account exists
        flash(NEUTRAL_ANSWER, "info")
        return render_template("login.html", next="")
    return render_template("forgot_password.html")


@bp.after_request
def never_cached(response):
    # the pages carry a reset secret in their URL: no shared or browser cache keeps them
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/reset/<token>", methods=["GET", "POST"])
@public
def reset(token: str):
    try:
        valid_token(token)
    except InvalidResetLink as exc:
        return _invalid(str(exc))
    if request.method == "POST":
        new = request.form.get("new_password", "")[:1024]
        if new != request.form.get("confirm_password", ""):
            flash("The two passwords differ.", "error")
        else:
            try:
                complete_reset(get_pacs(), token, new, source_ip=client_ip())
            except InvalidResetLink as exc:
                return _invalid(str(exc))
            except ValueError as exc:
                flash(str(exc).capitalize() + ".", "error")
            else:
                flash("Password changed: log in with it.", "success")
                return redirect(url_for("auth.login"))
        return render_template("reset_password.html"), 400
    return render_template("reset_password.html")


def _invalid(message: str):
    return render_template("reset_invalid.html", message=message), 410
