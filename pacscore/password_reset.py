"""Password reset by e-mail: single-use links, of which only a digest is stored.

:func:`request_reset` never tells its caller whether an account was found
(the console answers the same neutral message either way); it mails a link
only to an active local account with an e-mail address, at most once per
``reset_mail_interval_minutes``.  :func:`complete_reset` sets the password,
clears any lock and the forced change, ends every console session of the
account and spends the link.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from peewee import fn

from pacscore import audit
from pacscore.db import db, utcnow
from pacscore.models import PasswordResetToken, User, WebSession
from pacscore.users import set_password, unlock

if TYPE_CHECKING:
    from pacscore.app import Pacs

RESET_PATH = "/password/reset/"
MAIL_KIND = "password_reset"


class InvalidResetLink(ValueError):
    """The link is unknown, already used or expired (the message says which)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def find_account(login_or_email: str) -> User | None:
    """The account named by its login, or else by its (unique) e-mail address."""
    text = login_or_email.strip()
    if not text:
        return None
    user = User.get_or_none(User.login == text)
    if user is None and "@" in text:
        matches = list(User.select().where(fn.LOWER(User.email) == text.lower()).limit(2))
        user = matches[0] if len(matches) == 1 else None  # a shared address names nobody
    return user


def refusal(user: User | None) -> str:
    """Why ``user`` cannot get a reset link; empty when it can."""
    if user is None:
        return "unknown account"
    if user.auth_source != "local":
        return f"password managed by {user.auth_source}"
    if user.status == "disabled":
        return "account disabled"
    if not user.email:
        return "no e-mail address"
    return ""


def _recently_mailed(pacs: Pacs, user: User) -> bool:
    minutes = pacs.settings.core["reset_mail_interval_minutes"]
    since = utcnow() - timedelta(minutes=minutes)
    query = PasswordResetToken.select().where(
        (PasswordResetToken.user == user) & (PasswordResetToken.created > since)
    )
    return minutes > 0 and query.exists()


def reset_url(pacs: Pacs, request_base: str, token: str) -> str:
    """The link: the core setting ``public_url`` wins over the request's host."""
    base = pacs.settings.core["public_url"].strip() or request_base
    return base.rstrip("/") + RESET_PATH + token


def send_link(pacs: Pacs, user: User, request_base: str) -> None:
    """Create a link for ``user`` (earlier unused ones are spent) and mail it."""
    token = secrets.token_urlsafe(32)
    minutes = pacs.settings.core["reset_link_minutes"]
    url = reset_url(pacs, request_base, token)
    text = (
        f"Hello {user.first_name or user.login},\n\n"
        f"A new password was requested for the account {user.login}.\n"
        f"Open this link within {minutes} minutes to choose it (it works once):\n\n{url}\n\n"
        "If you did not ask for this, ignore this mail: your password is unchanged.\n"
    )
    # one transaction: an address the mail API refuses (ValueError) leaves no link behind
    with db.atomic():
        PasswordResetToken.update(used=utcnow()).where(
            (PasswordResetToken.user == user) & PasswordResetToken.used.is_null()
        ).execute()
        PasswordResetToken.create(
            user=user, token_hash=_digest(token), expires=utcnow() + timedelta(minutes=minutes)
        )
        pacs.send_mail(user.email, "Password reset", text, kind=MAIL_KIND)


def request_reset(
    pacs: Pacs, login_or_email: str, request_base: str, actor: str = "", source_ip: str = ""
) -> str:
    """Mail a link if the account may have one; return the outcome, for the audit only.

    ``actor`` is the administrator who asked (empty: the user, from the login page).
    """
    user = find_account(login_or_email[:255])
    reason = refusal(user)
    if not reason and not actor and _recently_mailed(pacs, user):
        reason = "rate limited"
    if not reason:
        try:
            send_link(pacs, user, request_base)
        except ValueError:
            reason = "invalid e-mail address"
    audit.record(
        "password_reset_request",
        actor=actor or login_or_email[:128],
        target=user.login if user else "",
        source_ip=source_ip,
        outcome=reason or "sent",
    )
    return reason or "sent"


def valid_token(token: str) -> PasswordResetToken:
    row = PasswordResetToken.get_or_none(PasswordResetToken.token_hash == _digest(token[:256]))
    if row is None:
        raise InvalidResetLink("This reset link is unknown. Ask for a new one.")
    if row.used is not None:
        raise InvalidResetLink("This reset link was already used. Ask for a new one.")
    if row.expires <= utcnow():
        raise InvalidResetLink("This reset link has expired. Ask for a new one.")
    return row


def complete_reset(pacs: Pacs, token: str, password: str, source_ip: str = "") -> User:
    """Set the new password through the link; ValueError if too short, InvalidResetLink."""
    row = valid_token(token)
    user = row.user
    if refusal(user):  # managed elsewhere or disabled since the link was sent
        raise InvalidResetLink("This account cannot reset its password here.")
    with db.atomic():
        spent = (
            PasswordResetToken.update(used=utcnow())
            .where((PasswordResetToken.id == row.id) & PasswordResetToken.used.is_null())
            .execute()
        )
        if not spent:  # a concurrent request used it first
            raise InvalidResetLink("This reset link was already used. Ask for a new one.")
        set_password(pacs, user, password)
        unlock(user)
        ended = WebSession.delete().where(WebSession.user == user).execute()
    audit.record(
        "password_reset", actor=user.login, target=user.login, source_ip=source_ip, sessions=ended
    )
    return user
