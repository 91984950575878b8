"""Accounts: password hashing (scrypt), the first administrator, logging in and lockout."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pacscore import audit
from pacscore.db import connection, utcnow
from pacscore.models import User

if TYPE_CHECKING:
    from pacscore.app import Pacs

# scrypt cost parameters (RFC 7914 recommends N >= 2**14 for interactive logins)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
ADMIN_PROFILE = "system administrator"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encode = base64.b64encode
    return (
        f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(computed, base64.b64decode(digest))


def ensure_admin(password: str, login: str = "admin") -> User:
    """Create the first administrator, or reset its password (idempotent init)."""
    user, _ = User.get_or_create(login=login, defaults={"profile": ADMIN_PROFILE})
    user.password_hash = hash_password(password)
    user.password_changed = utcnow()
    user.must_change_password = False
    user.profile = ADMIN_PROFILE
    user.status = "active"
    user.auth_source = "local"
    user.save()
    return user


# -- logging in ----------------------------------------------------------------------


@dataclass
class LoginResult:
    """The outcome of :func:`log_in`; ``user`` is set only on success."""

    success: bool
    user: User | None = None
    method: str = "local"
    reason: str = ""
    must_change_password: bool = False
    # False when the authority could not be reached: no password was checked
    counts_toward_lockout: bool = True


def log_in(pacs: Pacs, login: str, password: str, source_ip: str = "") -> LoginResult:
    """Check credentials: plugins (``authenticate``) first, then the local account.

    Lockout and the disabled status apply whatever the method; every attempt
    fires ``on_login`` and is audited.  The reason given to the caller never
    tells whether the login exists.
    """
    with connection():
        result = _decide(pacs, login, password)
        _count_attempt(pacs, login, result)
    pacs.hooks.relay.on_login(
        pacs=pacs,
        login=login,
        success=result.success,
        method=result.method,
        source_ip=source_ip,
    )
    audit.record(
        "login" if result.success else "login_failed",
        actor=login,
        source_ip=source_ip,
        method=result.method,
        reason=result.reason,
    )
    return result


def _decide(pacs: Pacs, login: str, password: str) -> LoginResult:
    user = User.get_or_none(User.login == login)
    if not password:
        # an empty password must never reach an LDAP bind (anonymous bind succeeds)
        return LoginResult(False, reason="invalid credentials")
    if user is not None and user.status == "disabled":
        return LoginResult(False, reason="account disabled")
    if user is not None and is_locked(user):
        return LoginResult(False, reason="account locked")
    verdict = pacs.hooks.relay.authenticate(pacs=pacs, login=login, password=password)
    if verdict is not None:
        method = str(verdict.get("method", "plugin"))
        if not verdict.get("accepted"):
            reason = verdict.get("reason", "refused")
            counts = not verdict.get("unavailable", False)
            return LoginResult(False, method=method, reason=reason, counts_toward_lockout=counts)
        user = upsert_external_user(login, method, verdict.get("user") or {})
        return LoginResult(True, user=user, method=method)
    if user is None or not _local_password_matches(user, password):
        return LoginResult(False, reason="invalid credentials")
    return LoginResult(True, user=user, must_change_password=password_expired(pacs, user))


def _local_password_matches(user: User, password: str) -> bool:
    # an account a plugin manages (auth_source "ldap"...) never logs in with a local password,
    # even a stale one: when its plugin is off or lets local accounts decide, it is refused
    if user.auth_source != "local" or not user.password_hash:
        return False
    return verify_password(password, user.password_hash)


def is_locked(user: User) -> bool:
    return user.status == "locked" and (user.locked_until is None or user.locked_until > utcnow())


def password_expired(pacs: Pacs, user: User) -> bool:
    if user.must_change_password:
        return True
    days = pacs.settings.core["password_renewal_days"]
    if not days or user.auth_source != "local":
        return False
    changed = user.password_changed or user.created
    return utcnow() - changed > timedelta(days=days)


def _count_attempt(pacs: Pacs, login: str, result: LoginResult) -> None:
    user = result.user or User.get_or_none(User.login == login)
    if user is None or result.reason in ("account disabled", "account locked"):
        return
    if not result.counts_toward_lockout:
        return
    if result.success:
        user.failed_attempts = 0
        user.status = "active"
        user.locked_until = None
        user.last_login = utcnow()
    else:
        user.failed_attempts += 1
        core = pacs.settings.core
        if user.failed_attempts >= core["max_failed_logins"]:
            user.status = "locked"
            user.locked_until = utcnow() + timedelta(minutes=core["lock_minutes"])
    user.save()


EXTERNAL_ATTRIBUTES = ("first_name", "last_name", "email", "profile", "physician_id")


def upsert_external_user(login: str, method: str, attributes: dict[str, Any]) -> User:
    """Create or update the local copy of an account a plugin vouched for."""
    user, _ = User.get_or_create(login=login, defaults={"auth_source": method})
    for name in EXTERNAL_ATTRIBUTES:
        if name in attributes:
            setattr(user, name, str(attributes[name] or ""))
    if "services" in attributes:
        user.services = json.dumps(list(attributes["services"]))
    user.auth_source = method
    user.password_hash = ""
    user.must_change_password = False  # the password lives with the plugin's authority
    user.save()
    return user


def set_password(pacs: Pacs, user: User, password: str) -> None:
    """Set a local password after checking the site's minimum length."""
    minimum = pacs.settings.core["min_password_length"]
    if len(password) < minimum:
        raise ValueError(f"the password must have at least {minimum} characters")
    user.password_hash = hash_password(password)
    user.password_changed = utcnow()
    user.must_change_password = False
    user.auth_source = "local"
    user.save()


def unlock(user: User) -> None:
    user.status = "active"
    user.failed_attempts = 0
    user.locked_until = None
    user.save()


def user_services(user: User) -> list[str]:
    return json.loads(user.services or "[]")
