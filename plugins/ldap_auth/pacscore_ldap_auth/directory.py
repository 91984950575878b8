"""Talking to the directory with python-ldap: connection, user lookup, bind, groups.

Every value that goes into a filter is escaped with ``escape_filter_chars`` and
every value that goes into a DN with ``escape_dn_chars``; an empty password
never reaches a bind (a simple bind without password is an anonymous bind,
which servers accept).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import ldap
from ldap.cidict import cidict
from ldap.dn import dn2str, escape_dn_chars, str2dn
from ldap.filter import escape_filter_chars

# Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups in one search
IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"
AD_CAPABILITY = "1.2.840.113556.1.4.800"  # LDAP_CAP_ACTIVE_DIRECTORY_OID, in the root DSE
MAX_NESTING = 8  # levels of groups of groups followed on servers without the in-chain rule

# the server is unreachable, silent, or the TLS handshake failed
UNREACHABLE = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.TIMELIMIT_EXCEEDED)


class DirectoryUnavailable(Exception):
    """The directory cannot answer: down, silent, TLS failure, refused service account,
    wrong base DN or filter.  Not the user's fault: no password was checked."""


class LoginRefused(Exception):
    """The directory knows the login and says no (wrong password, ambiguous login).

    ``str(exc)`` is the reason shown to the user; ``detail`` is for the administrator."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail


class UserUnknown(Exception):
    """The directory has no such login."""


@dataclass(frozen=True)
class Group:
    dn: str
    name: str


@dataclass
class DirectoryUser:
    dn: str
    attributes: dict[str, list[str]]
    groups: list[Group] = field(default_factory=list)

    def first(self, attribute: str) -> str:
        values = self.attributes.get(attribute) or [""]
        return values[0]


def describe(exc: ldap.LDAPError) -> str:
    """python-ldap's error as one readable line."""
    detail = exc.args[0] if exc.args else {}
    if not isinstance(detail, dict):
        return str(detail)
    text = detail.get("desc", type(exc).__name__)
    info = detail.get("info")
    return f"{text} ({info})" if info else text


def normalise_dn(dn: str) -> str:
    """A DN comparable with another one (spacing and case of attribute names and values)."""
    try:
        return dn2str(str2dn(dn)).lower()
    except ldap.DECODING_ERROR:
        return dn.strip().lower()


def _wrapped(text: str) -> str:
    text = text.strip()
    return text if text.startswith("(") else f"({text})"


def user_search_filter(settings: dict[str, Any], login: str) -> str:
    """``(&<user filter>(<login attribute>=<escaped login>))``."""
    value = escape_filter_chars(login)
    return f"(&{_wrapped(settings['user_filter'])}({settings['login_attribute']}={value}))"


def user_bind_dn(settings: dict[str, Any], login: str) -> str:
    """The direct-bind DN: the template with the escaped login (str.replace: no format
    fields besides ``{login}``)."""
    return settings["user_dn_template"].replace("{login}", escape_dn_chars(login))


def membership_filter(
    settings: dict[str, Any], member_dns: list[str], in_chain: bool = False
) -> str:
    """Groups (``group_filter``) whose member attribute holds one of ``member_dns`` (escaped);
    ``in_chain``: directly or through nested groups (Active Directory's matching rule)."""
    attribute = settings["group_member_attribute"]
    rule = f":{IN_CHAIN_RULE}:" if in_chain else ""
    terms = "".join(f"({attribute}{rule}={escape_filter_chars(dn)})" for dn in member_dns)
    return f"(&{_wrapped(settings['group_filter'])}(|{terms}))"


def _decode(entry: dict[str, list[bytes]]) -> dict[str, list[str]]:
    decoded = cidict()
    for name, values in entry.items():
        decoded[name] = [value.decode("utf-8", "replace") for value in values]
    return decoded


def _rdn_value(dn: str) -> str:
    try:
        return str2dn(dn)[0][0][1]
    except (ldap.DECODING_ERROR, IndexError):
        return dn


class Directory:
    """One connection, used for one login or one test; a context manager that unbinds."""

    def __init__(self, settings: dict[str, Any], service_password: str = "") -> None:
        self.settings = settings
        self._service_password = service_password
        self.conn: Any = None
        self.in_chain_supported: bool | None = None

    # -- connection -------------------------------------------------------------------

    def __enter__(self) -> Directory:
        self.conn = self._call(self._open)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.conn is not None:
            with contextlib.suppress(ldap.LDAPError):  # the server went away: nothing to close
                self.conn.unbind_s()
            self.conn = None

    def _open(self):
        s = self.settings
        # libldap tries a space-separated URI list in order (a fail-over list)
        conn = ldap.initialize(" ".join(s["uris"]))
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
        conn.set_option(ldap.OPT_REFERRALS, 0)  # AD's referrals would need another bind
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, s["connect_timeout"])
        conn.set_option(ldap.OPT_TIMEOUT, s["operation_timeout"])
        conn.timeout = s["operation_timeout"]  # python-ldap's synchronous calls wait this long
        try:
            if s["ca_file"]:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, s["ca_file"])
            verify = ldap.OPT_X_TLS_DEMAND if s["verify_certificate"] else ldap.OPT_X_TLS_NEVER
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, verify)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # applies the TLS options above; last
        except ValueError as exc:  # libldap says only "option error"
            raise DirectoryUnavailable(
                f"the TLS settings were refused: is the CA file {s['ca_file']!r} a readable PEM?"
            ) from exc
        if s["start_tls"]:
            conn.start_tls_s()
        return conn

    def _call(self, function, *args: Any, **kwargs: Any):
        """Run one python-ldap call; turn "cannot answer" errors into DirectoryUnavailable."""
        try:
            return function(*args, **kwargs)
        except UNREACHABLE as exc:
            uris = " ".join(self.settings["uris"])
            raise DirectoryUnavailable(f"{uris}: {describe(exc)}") from exc

    def _search(self, base: str, scope: int, filterstr: str, attributes: list[str], **kw: Any):
        try:
            found = self._call(self.conn.search_ext_s, base, scope, filterstr, attributes, **kw)
        except ldap.NO_SUCH_OBJECT as exc:
            raise DirectoryUnavailable(f"base DN {base!r} does not exist") from exc
        except (ldap.FILTER_ERROR, ldap.INVALID_DN_SYNTAX) as exc:
            problem = describe(exc)
            raise DirectoryUnavailable(f"invalid filter or DN in the settings: {problem}") from exc
        # AD adds search references (dn None) for other domains: not entries
        return [(dn, _decode(entry)) for dn, entry in found if dn]

    # -- binds ----------------------------------------------------------------------------

    def bind_service(self) -> None:
        """Bind with the service account (anonymous when none is configured)."""
        dn = self.settings["service_dn"]
        if dn and not self._service_password:
            raise DirectoryUnavailable("the service account has no password")
        try:
            self._call(self.conn.simple_bind_s, dn, self._service_password if dn else "")
        except ldap.INVALID_CREDENTIALS as exc:
            raise DirectoryUnavailable(
                f"the service account {dn!r} was refused: check its DN and password"
            ) from exc

    def bind_user(self, dn: str, password: str) -> None:
        if not password:
            raise LoginRefused("invalid credentials")  # would be an anonymous bind
        try:
            self._call(self.conn.simple_bind_s, dn, password)
        except (ldap.INVALID_CREDENTIALS, ldap.INVALID_DN_SYNTAX, ldap.UNWILLING_TO_PERFORM) as exc:
            raise LoginRefused("invalid credentials") from exc

    # -- users -------------------------------------------------------------------------------

    def _user_attributes(self) -> list[str]:
        s = self.settings
        names = [s["login_attribute"], s["first_name_attribute"], s["last_name_attribute"]]
        names += [s["email_attribute"], s["member_of_attribute"]]
        return names

    def find_user(self, login: str) -> tuple[str, dict[str, list[str]]]:
        """The one entry whose login attribute equals ``login`` (escaped) under the base DN."""
        try:
            found = self._search(
                self.settings["base_dn"],
                ldap.SCOPE_SUBTREE,
                user_search_filter(self.settings, login),
                self._user_attributes(),
                sizelimit=2,
            )
        except ldap.SIZELIMIT_EXCEEDED as exc:
            raise LoginRefused("ambiguous login: several directory entries match") from exc
        if not found:
            raise UserUnknown(login)
        if len(found) > 1:
            raise LoginRefused("ambiguous login: several directory entries match")
        return found[0]

    def read_entry(self, dn: str) -> dict[str, list[str]]:
        found = self._search(dn, ldap.SCOPE_BASE, "(objectClass=*)", self._user_attributes())
        return found[0][1] if found else cidict()

    def log_in(self, login: str, password: str) -> DirectoryUser:
        """Check the credentials; the user's entry and groups on success.

        Raises :class:`LoginRefused`, :class:`UserUnknown` or :class:`DirectoryUnavailable`.
        """
        if not password:
            raise LoginRefused("invalid credentials")
        if self.settings["bind_mode"] == "direct":
            return self._direct_log_in(login, password)
        self.bind_service()
        dn, attributes = self.find_user(login)
        self._require_exact_login(login, attributes)
        self.bind_user(dn, password)
        self.bind_service()  # groups are read with the service account's rights
        return DirectoryUser(dn, attributes, self.groups_of(dn, attributes))

    def _direct_log_in(self, login: str, password: str) -> DirectoryUser:
        # an unknown login is "invalid credentials" here: the bind cannot tell it apart
        bind_dn = user_bind_dn(self.settings, login)
        self.bind_user(bind_dn, password)
        try:
            if self.settings["base_dn"]:
                dn, attributes = self.find_user(login)  # a UPN template is no DN: search
            else:
                dn, attributes = bind_dn, self.read_entry(bind_dn)
        except UserUnknown as exc:
            raise DirectoryUnavailable(
                f"bound as {bind_dn!r} but no entry matches the user filter under the base DN"
            ) from exc
        self._require_exact_login(login, attributes)
        return DirectoryUser(dn, attributes, self.groups_of(dn, attributes))

    def _require_exact_login(self, login: str, attributes: dict[str, list[str]]) -> None:
        """Directory matching ignores case and extra spaces; the local account is keyed by
        the exact login.  Accepting "ALICE" for alice would create a second local account
        that escapes alice's lockout and disabled status: only the login as stored passes."""
        stored = attributes.get(self.settings["login_attribute"]) or []
        if login not in stored:
            detail = f"the directory stores this login as {stored!r}: type it exactly so"
            raise LoginRefused("invalid credentials", detail)

    # -- groups ------------------------------------------------------------------------------

    def supports_in_chain(self) -> bool:
        """Whether the server evaluates LDAP_MATCHING_RULE_IN_CHAIN (Active Directory)."""
        if self.in_chain_supported is None:
            try:
                root = self._search(
                    "", ldap.SCOPE_BASE, "(objectClass=*)", ["supportedCapabilities"]
                )
            except DirectoryUnavailable:
                root = []
            capabilities = root[0][1].get("supportedCapabilities", []) if root else []
            self.in_chain_supported = AD_CAPABILITY in capabilities
        return self.in_chain_supported

    def _group_base(self) -> str:
        return self.settings["group_base_dn"] or self.settings["base_dn"]

    def _groups_where(self, filterstr: str) -> list[Group]:
        s = self.settings
        found = self._search(
            self._group_base(), ldap.SCOPE_SUBTREE, filterstr, [s["group_name_attribute"]]
        )
        return [
            Group(dn, (entry.get(s["group_name_attribute"]) or [_rdn_value(dn)])[0])
            for dn, entry in found
        ]

    def _groups_containing(self, member_dns: list[str]) -> list[Group]:
        if not member_dns:
            return []
        return self._groups_where(membership_filter(self.settings, member_dns))

    def groups_of(self, user_dn: str, attributes: dict[str, list[str]]) -> list[Group]:
        """The user's groups, by memberOf or by group objects, nested ones if configured."""
        s = self.settings
        nested = s["nested_groups"]
        if nested and self._group_base() and self.supports_in_chain():
            return self._groups_where(membership_filter(s, [user_dn], in_chain=True))
        if s["group_search"] == "member_of":
            dns = attributes.get(s["member_of_attribute"]) or []
            direct = [Group(dn, _rdn_value(dn)) for dn in dns]
        else:
            direct = self._groups_containing([user_dn])
        if nested and self._group_base():
            return self._with_parent_groups(direct)
        return direct

    def _with_parent_groups(self, groups: list[Group]) -> list[Group]:
        """Follow groups of groups level by level (servers without the in-chain rule)."""
        seen = {normalise_dn(g.dn): g for g in groups}
        frontier = [g.dn for g in groups]
        for _ in range(MAX_NESTING):
            found = self._groups_containing(frontier)
            parents = [g for g in found if normalise_dn(g.dn) not in seen]
            if not parents:
                break
            seen.update((normalise_dn(g.dn), g) for g in parents)
            frontier = [g.dn for g in parents]
        return list(seen.values())
