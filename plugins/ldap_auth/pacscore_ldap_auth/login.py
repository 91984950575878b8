"""The decision: directory answer + group mapping -> an ``authenticate`` verdict.

Also the two checks an administrator runs from the settings page,
:func:`test_connection` and :func:`test_login`, which change nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ldap

from pacscore.db import connection
from pacscore.models import Profile, User
from pacscore.secrets import SecretError
from pacscore_ldap_auth.directory import (
    Directory,
    DirectoryUnavailable,
    DirectoryUser,
    Group,
    LoginRefused,
    UserUnknown,
    describe,
    normalise_dn,
)

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

PLUGIN = "ldap_auth"
METHOD = "ldap"
ALERT_KIND = "ldap_unavailable"
ALERT_INTERVAL_SECONDS = 600.0  # one alert per outage and per 10 minutes, not one per login
UNAVAILABLE_REASON = "the login directory (LDAP) is unavailable; try again later"
NO_GROUP_REASON = "not a member of any group allowed to log in"


# -- group mapping ------------------------------------------------------------------------


def _matches(rule_group: str, group: Group) -> bool:
    wanted = rule_group.strip()
    if "=" in wanted:  # a full DN
        return normalise_dn(wanted) == normalise_dn(group.dn)
    return wanted.lower() == group.name.strip().lower()


def profile_for(settings: dict[str, Any], groups: list[Group]) -> str | None:
    """The profile of the first rule (in order) naming one of ``groups``; ``None``: no rule."""
    for rule in settings["profile_mapping"]:
        if any(_matches(rule["group"], group) for group in groups):
            return rule["profile"]
    return None


def services_for(settings: dict[str, Any], groups: list[Group]) -> list[str]:
    """The union (in rule order) of the services of every rule naming one of ``groups``."""
    services: list[str] = []
    for rule in settings["services_mapping"]:
        if any(_matches(rule["group"], group) for group in groups):
            services += [name for name in rule["services"] if name not in services]
    return services


# -- alerts ------------------------------------------------------------------------------------


class _AlertThrottle:
    """At most one alert per ``ALERT_INTERVAL_SECONDS`` and per application; the next
    outage after the directory answered again alerts at once."""

    def __init__(self) -> None:
        self._last: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def should_alert(self, pacs: Pacs) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(pacs)
            if last is not None and now - last < ALERT_INTERVAL_SECONDS:
                return False
            self._last[pacs] = now
            return True

    def reachable(self, pacs: Pacs) -> None:
        with self._lock:
            self._last.pop(pacs, None)


throttle = _AlertThrottle()


def _report_unavailable(pacs: Pacs, settings: dict[str, Any], problem: str) -> None:
    fallback = "local accounts only" if settings["fallback_to_local"] else "no login possible"
    log.warning("LDAP login impossible: %s", problem)
    if throttle.should_alert(pacs):
        pacs.alert(ALERT_KIND, f"LDAP directory unavailable ({fallback}): {problem}")


# -- authenticate --------------------------------------------------------------------------


def _refused(reason: str, **extra: Any) -> dict[str, Any]:
    return {"accepted": False, "method": METHOD, "reason": reason, **extra}


def service_password(pacs: Pacs, settings: dict[str, Any]) -> str:
    """The service account password, decrypted (stored encrypted, see the settings)."""
    try:
        return pacs.secrets.decrypt(settings["service_password"])
    except SecretError as exc:
        raise DirectoryUnavailable(f"cannot decrypt the service account password: {exc}") from exc


def look_up(pacs: Pacs, settings: dict[str, Any], login: str, password: str) -> DirectoryUser:
    """Check the credentials against the directory (raises the ``directory`` exceptions)."""
    password_of_service = service_password(pacs, settings) if settings["service_dn"] else ""
    try:
        with Directory(settings, password_of_service) as directory:
            return directory.log_in(login, password)
    except ldap.LDAPError as exc:  # anything else the server says: a configuration problem
        raise DirectoryUnavailable(describe(exc)) from exc


def _managed_here(login: str) -> bool:
    user = User.get_or_none(User.login == login)
    return user is not None and user.auth_source == METHOD


def authenticate(pacs: Pacs, login: str, password: str) -> dict[str, Any] | None:
    """The ``authenticate`` hook: a verdict, or ``None`` to let local accounts decide."""
    settings = pacs.plugin_settings(PLUGIN)
    if not settings["uris"]:
        return None  # not configured
    if not password:
        return _refused("invalid credentials")
    try:
        user = look_up(pacs, settings, login, password)
    except DirectoryUnavailable as exc:
        _report_unavailable(pacs, settings, str(exc))
        if settings["fallback_to_local"] and not _managed_here(login):
            return None
        return _refused(UNAVAILABLE_REASON, unavailable=True)
    except UserUnknown:
        throttle.reachable(pacs)
        return None if settings["fallback_to_local"] else _refused("invalid credentials")
    except LoginRefused as exc:
        throttle.reachable(pacs)
        return _refused(str(exc))
    throttle.reachable(pacs)
    return _verdict(settings, user)


def _verdict(settings: dict[str, Any], user: DirectoryUser) -> dict[str, Any]:
    profile = profile_for(settings, user.groups)
    if profile is None:
        return _refused(NO_GROUP_REASON)
    if Profile.get_or_none(Profile.name == profile) is None:
        log.error("ldap_auth maps a group to the profile %r, which does not exist", profile)
        return _refused(f"the profile {profile!r} mapped to this user's groups does not exist")
    attributes = {
        "first_name": user.first(settings["first_name_attribute"]),
        "last_name": user.first(settings["last_name_attribute"]),
        "email": user.first(settings["email_attribute"]),
        "profile": profile,
        "services": services_for(settings, user.groups),
    }
    return {"accepted": True, "method": METHOD, "user": attributes}


# -- checks for the settings page ---------------------------------------------------------


@dataclass
class CheckResult:
    """What :func:`test_connection` and :func:`test_login` show the administrator."""

    ok: bool
    message: str
    dn: str = ""
    groups: list[str] = field(default_factory=list)
    profile: str | None = None
    services: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _configured(pacs: Pacs) -> dict[str, Any] | None:
    settings = pacs.plugin_settings(PLUGIN)
    return settings if settings["uris"] else None


def test_connection(pacs: Pacs) -> CheckResult:
    """Connect (with TLS as configured), bind the service account (search mode, or
    anonymously in direct mode) and read the base DN.  Changes nothing."""
    with connection():
        settings = _configured(pacs)
    if settings is None:
        return CheckResult(False, "no LDAP URI configured: the plugin is off")
    tls = "LDAPS" if any(u.lower().startswith("ldaps://") for u in settings["uris"]) else "none"
    details = {"uris": settings["uris"], "tls": "StartTLS" if settings["start_tls"] else tls}
    try:
        password = service_password(pacs, settings) if settings["service_dn"] else ""
        with Directory(settings, password) as directory:
            directory.bind_service()
            if settings["base_dn"]:
                directory.read_entry(settings["base_dn"])
            details["bound_as"] = settings["service_dn"] or "anonymous"
            details["nested_groups"] = _nesting(settings, directory)
    except DirectoryUnavailable as exc:
        return CheckResult(False, str(exc), details=details)
    except ldap.LDAPError as exc:
        return CheckResult(False, describe(exc), details=details)
    return CheckResult(True, f"connected to {' '.join(settings['uris'])}", details=details)


def _nesting(settings: dict[str, Any], directory: Directory) -> str:
    if not settings["nested_groups"]:
        return "off"
    if directory.supports_in_chain():
        return "LDAP_MATCHING_RULE_IN_CHAIN"
    return "followed level by level (the server has no in-chain rule)"


def test_login(pacs: Pacs, login: str, password: str) -> CheckResult:
    """Check ``login``/``password`` against the directory and show the groups found and
    the resulting profile and services.  Creates no user and counts no failure."""
    with connection():
        settings = _configured(pacs)
    if settings is None:
        return CheckResult(False, "no LDAP URI configured: the plugin is off")
    try:
        user = look_up(pacs, settings, login, password)
    except DirectoryUnavailable as exc:
        return CheckResult(False, f"directory unavailable: {exc}")
    except UserUnknown:
        return CheckResult(False, f"no directory entry for {login!r}")
    except LoginRefused as exc:
        return CheckResult(False, f"refused: {exc}" + (f" ({exc.detail})" if exc.detail else ""))
    with connection():
        verdict = _verdict(settings, user)
    return CheckResult(
        ok=verdict["accepted"],
        message="accepted" if verdict["accepted"] else f"refused: {verdict['reason']}",
        dn=user.dn,
        groups=[group.name for group in user.groups],
        profile=profile_for(settings, user.groups),
        services=services_for(settings, user.groups),
        attributes={
            key: user.first(settings[f"{key}_attribute"])
            for key in ("login", "first_name", "last_name", "email")
        },
    )
