"""Who is asking, and may they: rights on every route, sessions, API auth, CSRF.

Every view function declares what it needs with one of three decorators:

* ``@require_right("view_studies")``: a logged-in user whose profile holds the right;
* ``@authenticated``: any logged-in user (their own password, their API tokens);
* ``@public``: no login (the login page, the health check, the OpenAPI document).

The decorators only *mark* the view; :func:`check_request`, run before every
request, enforces the mark.  A view without a mark, such as a plugin page that
forgot it, is refused for everyone: a missing declaration fails closed.

Console pages authenticate with a server-side session (``WebSession``): the
signed Flask cookie carries a random key whose digest is looked up on every
request, so that session duration and inactivity logout are decided by the
server and logging out really ends the session.  The REST API accepts a
per-user token (``Authorization: Bearer``), HTTP basic, or the console session
(then with the CSRF token in the ``X-CSRF-Token`` header); an optional IP
allow-list (setting ``api_ip_allowlist``) applies to every API route.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from flask import abort, current_app, flash, g, redirect, request, session, url_for

from pacscore.db import utcnow
from pacscore.models import ApiToken, User, WebSession
from pacscore.rights import profile_rights
from pacscore.users import is_locked, log_in, password_expired

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)

RIGHT_ATTRIBUTE = "pacs_right"
PUBLIC = ":public"
AUTHENTICATED = ":authenticated"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_PREFIX = "pct_"
# last_seen is written at most this often: a database write per request is not needed
TOUCH_SECONDS = 15
# pages a user whose password expired may still open
PASSWORD_CHANGE_ENDPOINTS = frozenset({"auth.change_password", "auth.logout"})


# -- declarations -----------------------------------------------------------------


def require_right(right: str) -> Callable[[F], F]:
    """Declare the right a view needs (checked before the view runs)."""
    if not right or right.startswith(":"):
        raise ValueError(f"invalid right name {right!r}")

    def mark(view: F) -> F:
        setattr(view, RIGHT_ATTRIBUTE, right)
        return view

    return mark


def public(view: F) -> F:
    """Declare a view open to anyone, logged in or not."""
    setattr(view, RIGHT_ATTRIBUTE, PUBLIC)
    return view


def authenticated(view: F) -> F:
    """Declare a view open to any logged-in user, whatever their profile."""
    setattr(view, RIGHT_ATTRIBUTE, AUTHENTICATED)
    return view


def declared_right(view: Callable | None) -> str | None:
    """The mark of a view function (``None`` if it declared nothing)."""
    if view is None:
        return None
    right = getattr(view, RIGHT_ATTRIBUTE, None)
    view_class = getattr(view, "view_class", None)
    if right is None and view_class is not None:
        right = getattr(view_class, RIGHT_ATTRIBUTE, None)
    return right


def endpoint_right(app, endpoint: str) -> str | None:
    if endpoint == "static" or endpoint.endswith(".static"):
        return PUBLIC
    return declared_right(app.view_functions.get(endpoint))


# -- who is asking ----------------------------------------------------------------


def current_user() -> User | None:
    """The user of the current request, or ``None``."""
    return g.get("user")


def user_rights(user: User | None = None) -> frozenset[str]:
    user = user or current_user()
    if user is None:
        return frozenset()
    if "rights" not in g or g.get("rights_of") != user.id:
        g.rights, g.rights_of = profile_rights(user.profile), user.id
    return g.rights


def has_right(right: str) -> bool:
    return right in user_rights()


def is_api_request() -> bool:
    return request.path.startswith("/api/")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_ip() -> str:
    return request.remote_addr or ""


def usable(user: User | None) -> bool:
    return user is not None and user.status != "disabled" and not is_locked(user)


# -- console sessions -----------------------------------------------------------------


def start_session(user: User, must_change_password: bool) -> None:
    """Open a server-side session for ``user`` (a fresh cookie: no fixation)."""
    session.clear()
    _forget_ended_sessions()
    key = secrets.token_urlsafe(32)
    WebSession.create(
        key_hash=digest(key),
        user=user,
        source_ip=client_ip()[:64],
        must_change_password=must_change_password,
    )
    session["sid"] = key
    session["csrf"] = secrets.token_urlsafe(32)


def _forget_ended_sessions() -> None:
    """Delete the rows of sessions that ended without a logout (cheap, at each login)."""
    core = current_app.extensions["pacs"].settings.core
    now = utcnow()
    WebSession.delete().where(
        (WebSession.created < now - timedelta(minutes=core["session_minutes"]))
        | (WebSession.last_seen < now - timedelta(minutes=core["inactivity_minutes"]))
    ).execute()


def end_session() -> None:
    key = session.get("sid")
    if key:
        WebSession.delete().where(WebSession.key_hash == digest(key)).execute()
    session.clear()


def _session_user() -> User | None:
    key = session.get("sid")
    if not key:
        return None
    row = WebSession.get_or_none(WebSession.key_hash == digest(str(key)))
    if row is None:
        session.pop("sid", None)
        return None
    core = current_app.extensions["pacs"].settings.core
    now = utcnow()
    too_old = now - row.created > timedelta(minutes=core["session_minutes"])
    idle = now - row.last_seen > timedelta(minutes=core["inactivity_minutes"])
    user = User.get_or_none(User.id == row.user_id)
    if too_old or idle or not usable(user):
        row.delete_instance()
        session.pop("sid", None)
        g.session_ended = "expired" if too_old else "inactive" if idle else "account unavailable"
        return None
    if (now - row.last_seen).total_seconds() > TOUCH_SECONDS:
        WebSession.update(last_seen=now).where(WebSession.id == row.id).execute()
    g.web_session = row
    return user


def password_change_pending() -> bool:
    row = g.get("web_session")
    return bool(row and row.must_change_password)


def clear_password_change() -> None:
    row = g.get("web_session")
    if row is not None:
        WebSession.update(must_change_password=False).where(WebSession.id == row.id).execute()


# -- API authentication ------------------------------------------------------------------


def new_api_token(user: User, name: str) -> str:
    """Create a token for ``user``; the clear value is returned once, never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ApiToken.create(user=user, name=name[:128], token_hash=digest(token))
    return token


def _token_user(token: str) -> User | None:
    row = ApiToken.get_or_none(ApiToken.token_hash == digest(token))
    if row is None:
        return None
    now = utcnow()
    if row.last_used is None or (now - row.last_used).total_seconds() > TOUCH_SECONDS:
        ApiToken.update(last_used=now).where(ApiToken.id == row.id).execute()
    user = User.get_or_none(User.id == row.user_id)
    return user if usable(user) else None


def _basic_user(encoded: str) -> User | None:
    try:
        login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        abort(401, "malformed basic credentials")
    pacs = current_app.extensions["pacs"]
    result = log_in(pacs, login, password, client_ip())
    if not result.success:
        return None
    if result.must_change_password or password_expired(pacs, result.user):
        abort(403, "password expired: change it in the console")
    return result.user


def _api_user() -> tuple[User | None, bool]:
    """(user, by_cookie): the caller of an API request."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return _token_user(credentials.strip()), False
    if scheme.lower() == "basic":
        return _basic_user(credentials.strip()), False
    if header:
        abort(401, "unsupported authorization scheme: use Bearer or Basic")
    return _session_user(), True


def _check_ip_allowlist() -> None:
    networks = current_app.extensions["pacs"].settings.core["api_ip_allowlist"]
    if not networks:
        return
    try:
        address = ipaddress.ip_address(client_ip())
    except ValueError:
        abort(403, "address not allowed")
    if not any(address in ipaddress.ip_network(n, strict=False) for n in networks):
        log.warning("API request from %s refused by the IP allow-list", address)
        abort(403, "address not allowed to use the API")


# -- CSRF ---------------------------------------------------------------------------


def csrf_token() -> str:
    """The session's CSRF token (created on first use), for forms and API headers."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf() -> None:
    expected = session.get("csrf")
    given = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(str(expected), str(given)):
        abort(400, "the form is stale or forged (CSRF token missing or wrong): reload the page")


# -- the check before every request ----------------------------------------------------


def check_request():
    """Authenticate the caller and enforce the view's declared right."""
    endpoint = request.endpoint
    if endpoint is None:
        return None  # no route: the 404/405 handlers answer
    if endpoint == "static" or endpoint.endswith(".static"):
        return None  # style sheets: no session lookup
    right = endpoint_right(current_app, endpoint)
    api = is_api_request()
    if api:
        _check_ip_allowlist()
        user, by_cookie = _api_user() if right != PUBLIC else (None, False)
    else:
        user, by_cookie = _session_user(), True
    g.user = user
    if by_cookie and request.method not in SAFE_METHODS:
        _check_csrf()
    if right is None:
        log.error("route %s declares no right: refused", endpoint)
        return _refuse(user, api)
    if right == PUBLIC:
        return None
    if user is None:
        return _unauthenticated(api)
    if password_change_pending() and endpoint not in PASSWORD_CHANGE_ENDPOINTS:
        if api:
            abort(403, "password expired: change it in the console")
        return redirect(url_for("auth.change_password"))
    if right != AUTHENTICATED and right not in user_rights(user):
        return _refuse(user, api)
    return None


def _unauthenticated(api: bool):
    if api:
        abort(401, "authentication required (API token or basic)")
    ended = g.get("session_ended")
    if ended:
        flash(f"Your session ended ({ended}); please log in again.", "warning")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _refuse(user: User | None, api: bool):
    if user is None and not api:
        return _unauthenticated(api)
    abort(403, "you do not have the right to do this")
