"""ldap_auth against a real slapd, through ``pacscore.users.log_in`` (what the console
and the API call): profiles from groups, refusals, escaping, outages, TLS."""

from __future__ import annotations

import json
import socket

import ldap
import pacscore_ldap_auth as plugin
import pytest
from ldap_test_server import (
    GROUPS,
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    person,
    user_dn,
)
from marshmallow import ValidationError
from pacscore_ldap_auth.directory import membership_filter, user_bind_dn, user_search_filter
from pacscore_ldap_auth.login import NO_GROUP_REASON, UNAVAILABLE_REASON

from pacscore.db import connection
from pacscore.models import AuditEvent, PluginFailureRecord, PluginState, User
from pacscore.users import hash_password, log_in

MAPPING = [
    {"group": "admins", "profile": "system administrator"},
    {"group": "radiologists", "profile": "radiologist"},
    {"group": "referring", "profile": "referring"},
]


def settings_for(slapd, **overrides) -> dict:
    """Search-then-bind with the service account, group objects, the three mappings."""
    return {
        "uris": [slapd.ldap_uri],
        "bind_mode": "search",
        "service_dn": SERVICE_DN,
        "service_password": SERVICE_PASSWORD,
        "base_dn": PEOPLE,
        "group_base_dn": GROUPS,
        "user_filter": "(objectClass=inetOrgPerson)",
        "profile_mapping": MAPPING,
        "services_mapping": [{"group": "referring", "services": ["cardiology", "emergency"]}],
        "connect_timeout": 3,
        "operation_timeout": 5,
        **overrides,
    }


def configure(pacs, slapd, **overrides) -> None:
    with connection():
        pacs.save_plugin_settings("ldap_auth", settings_for(slapd, **overrides))


def local_user(login: str) -> User | None:
    with connection():
        return User.get_or_none(User.login == login)


def make_local_account(login: str, password: str, **fields) -> None:
    with connection():
        User.create(login=login, password_hash=hash_password(password), **fields)


@pytest.fixture
def ldap_pacs(pacs, slapd):
    configure(pacs, slapd)
    return pacs


# -- profiles from groups --------------------------------------------------------------------


def test_groups_give_the_profile_first_matching_rule_wins(ldap_pacs):
    expected = {
        "alice": ("alice-pw", "radiologist"),
        "bob": ("bob-pw", "referring"),
        "carol": ("carol-pw", "system administrator"),  # admins and radiologists
    }
    for login, (password, profile) in expected.items():
        result = log_in(ldap_pacs, login, password, source_ip="127.0.0.1")
        assert result.success, (login, result.reason)
        assert result.method == "ldap"
        assert result.user.profile == profile
    bob = local_user("bob")
    assert (bob.first_name, bob.last_name, bob.email) == ("Bob", "Durand", "bob@example.org")
    assert bob.auth_source == "ldap" and bob.password_hash == ""
    assert json.loads(bob.services) == ["cardiology", "emergency"]
    assert json.loads(local_user("alice").services) == []  # no services rule: every study
    with connection():
        audited = [(e.actor, e.action) for e in AuditEvent.select().order_by(AuditEvent.id)]
    assert audited == [("alice", "login"), ("bob", "login"), ("carol", "login")]


def test_the_rule_order_decides_not_the_group_order(pacs, slapd):
    radiologists_first = [MAPPING[1], MAPPING[0], MAPPING[2]]
    configure(pacs, slapd, profile_mapping=radiologists_first)
    assert log_in(pacs, "carol", "carol-pw").user.profile == "radiologist"


def test_a_user_in_no_mapped_group_is_refused(ldap_pacs):
    result = log_in(ldap_pacs, "dave", "dave-pw")
    assert not result.success and result.reason == NO_GROUP_REASON
    assert local_user("dave") is None


def test_group_changes_apply_at_the_next_login_and_a_removed_user_is_refused(ldap_pacs, slapd):
    slapd.add(person("eve", "eve-pw", "Eve", "Moved"))
    eve = user_dn("eve")
    slapd.modify(f"dn: cn=referring,{GROUPS}\nchangetype: modify\nadd: member\nmember: {eve}\n")
    assert log_in(ldap_pacs, "eve", "eve-pw").user.profile == "referring"

    slapd.modify(
        f"dn: cn=referring,{GROUPS}\nchangetype: modify\ndelete: member\nmember: {eve}\n\n"
        f"dn: cn=radiologists,{GROUPS}\nchangetype: modify\nadd: member\nmember: {eve}\n"
    )
    result = log_in(ldap_pacs, "eve", "eve-pw")
    assert result.user.profile == "radiologist"
    assert json.loads(result.user.services) == []  # the referring services went with the group

    slapd.modify(
        f"dn: cn=radiologists,{GROUPS}\nchangetype: modify\ndelete: member\nmember: {eve}\n"
    )
    result = log_in(ldap_pacs, "eve", "eve-pw")
    assert not result.success and result.reason == NO_GROUP_REASON

    slapd.ldapdelete(eve)
    result = log_in(ldap_pacs, "eve", "eve-pw")
    assert not result.success
    assert local_user("eve").auth_source == "ldap"  # the local copy stays, and stays useless


def test_a_stale_local_password_never_logs_in_an_ldap_account(ldap_pacs, slapd):
    slapd.add(person("frank", "frank-pw", "Frank", "Gone"))
    slapd.modify(
        f"dn: cn=referring,{GROUPS}\nchangetype: modify\nadd: member\nmember: {user_dn('frank')}\n"
    )
    assert log_in(ldap_pacs, "frank", "frank-pw").success
    with connection():  # a password hash left over from before the account moved to LDAP
        User.update(password_hash=hash_password("old-local-pw")).where(
            User.login == "frank"
        ).execute()
    slapd.ldapdelete(user_dn("frank"))  # the directory no longer knows frank: local decides
    assert not log_in(ldap_pacs, "frank", "old-local-pw").success
    assert not log_in(ldap_pacs, "frank", "frank-pw").success


def test_a_disabled_local_user_stays_refused(ldap_pacs):
    assert log_in(ldap_pacs, "alice", "alice-pw").success
    with connection():
        User.update(status="disabled").where(User.login == "alice").execute()
    result = log_in(ldap_pacs, "alice", "alice-pw")
    assert not result.success and result.reason == "account disabled"


# -- refusals ----------------------------------------------------------------------------------


def test_wrong_passwords_count_toward_lockout(ldap_pacs):
    with connection():
        ldap_pacs.settings.update_core({"max_failed_logins": 3})
    assert log_in(ldap_pacs, "bob", "bob-pw").success
    for _ in range(3):
        result = log_in(ldap_pacs, "bob", "not-bob-pw")
        assert not result.success and result.reason == "invalid credentials"
    assert local_user("bob").status == "locked"
    result = log_in(ldap_pacs, "bob", "bob-pw")  # the right password, too late
    assert not result.success and result.reason == "account locked"


def test_an_empty_password_is_refused_and_never_bound(ldap_pacs, slapd):
    # the danger: this directory accepts a DN without password (an anonymous bind)
    directory = ldap.initialize(slapd.ldap_uri)
    directory.simple_bind_s(user_dn("alice"), "")
    assert directory.whoami_s() == ""  # bound, as nobody
    directory.unbind_s()
    for password in ("", None):
        verdict = ldap_pacs.hooks.relay.authenticate(
            pacs=ldap_pacs, login="alice", password=password
        )
        assert verdict["accepted"] is False
        assert not log_in(ldap_pacs, "alice", password or "").success
    assert local_user("alice") is None


@pytest.mark.parametrize(
    "login", ["*)(uid=*", "admin)(|(uid=*", "*", "alice)(uid=*", "alice*", "a*e", "*)(|(cn=*"]
)
def test_filter_injection_is_refused(ldap_pacs, login):
    # alice's password would open any of these if the login went unescaped into the filter
    result = log_in(ldap_pacs, login, "alice-pw")
    assert not result.success
    with connection():
        assert User.select().count() == 0


@pytest.mark.parametrize("bind_mode", ["search", "direct"])
def test_only_the_login_as_stored_passes_not_a_case_or_space_variant(pacs, slapd, bind_mode):
    # the directory matches "ALICE" and "alice " to alice; a second local account must not
    template = f"uid={{login}},{PEOPLE}"
    configure(pacs, slapd, bind_mode=bind_mode, user_dn_template=template)
    assert log_in(pacs, "alice", "alice-pw").success
    with connection():
        User.update(status="disabled").where(User.login == "alice").execute()
    for variant in ("ALICE", "Alice", "alice ", " alice"):
        result = log_in(pacs, variant, "alice-pw")
        assert not result.success and result.reason == "invalid credentials", variant
    with connection():
        assert [u.login for u in User.select()] == ["alice"]
    assert "type it exactly" in plugin.test_login(pacs, "Alice", "alice-pw").message


def test_logins_are_escaped_in_filters_and_dns():
    settings = {"user_filter": "objectClass=person", "login_attribute": "uid"}
    assert (
        user_search_filter(settings, "*)(uid=*") == r"(&(objectClass=person)(uid=\2a\29\28uid=\2a))"
    )
    template = {"user_dn_template": "uid={login},ou=people,dc=example,dc=org"}
    assert user_bind_dn(template, "x,ou=admins") == r"uid=x\,ou\=admins,ou=people,dc=example,dc=org"


def test_a_login_full_of_metacharacters_works_in_both_bind_modes(pacs, slapd):
    configure(pacs, slapd)
    assert log_in(pacs, "smith,(jr)*", "smith-pw").user.profile == "referring"
    configure(pacs, slapd, bind_mode="direct", user_dn_template=f"uid={{login}},{PEOPLE}")
    assert log_in(pacs, "smith,(jr)*", "smith-pw").success


# -- modes -----------------------------------------------------------------------------------


def test_direct_bind_without_a_service_account(pacs, slapd):
    configure(
        pacs,
        slapd,
        bind_mode="direct",
        user_dn_template=f"uid={{login}},{PEOPLE}",
        service_dn="",
        service_password="",
        base_dn="",
    )
    assert log_in(pacs, "alice", "alice-pw").user.profile == "radiologist"
    assert not log_in(pacs, "alice", "bob-pw").success
    assert not log_in(pacs, "bob", "alice-pw").success


def test_member_of_group_search(pacs, slapd):
    configure(pacs, slapd, group_search="member_of")
    assert log_in(pacs, "carol", "carol-pw").user.profile == "system administrator"
    found = plugin.test_login(pacs, "alice", "alice-pw")
    assert found.groups == ["radiologists"]


def test_groups_of_unique_names(pacs, slapd):
    rules = [{"group": "unique-referring", "profile": "secretary"}]
    configure(pacs, slapd, group_member_attribute="uniqueMember", profile_mapping=rules)
    assert log_in(pacs, "bob", "bob-pw").user.profile == "secretary"
    assert not log_in(pacs, "alice", "alice-pw").success


def test_the_in_chain_filter_for_active_directory_is_escaped():
    settings = {"group_member_attribute": "member", "group_filter": "(objectClass=group)"}
    assert membership_filter(settings, ["CN=a*b,DC=corp"], in_chain=True) == (
        r"(&(objectClass=group)(|(member:1.2.840.113556.1.4.1941:=CN=a\2ab,DC=corp)))"
    )


def test_nested_groups_are_followed_when_enabled(pacs, slapd):
    staff_first = [{"group": "imaging-staff", "profile": "technician"}, *MAPPING]
    configure(pacs, slapd, profile_mapping=staff_first)
    assert log_in(pacs, "alice", "alice-pw").user.profile == "radiologist"
    configure(pacs, slapd, profile_mapping=staff_first, nested_groups=True)
    assert log_in(pacs, "alice", "alice-pw").user.profile == "technician"
    found = plugin.test_login(pacs, "alice", "alice-pw")
    assert sorted(found.groups) == ["imaging-staff", "radiologists"]
    assert plugin.test_connection(pacs).details["nested_groups"].startswith("followed level")


# -- the directory unavailable -----------------------------------------------------------------


def test_slapd_stopped_mid_run_falls_back_to_local_accounts_and_alerts_once(ldap_pacs, slapd):
    make_local_account("localadmin", "local-admin-pw", profile="system administrator")
    assert log_in(ldap_pacs, "alice", "alice-pw").success
    slapd.pause()
    try:
        assert log_in(ldap_pacs, "localadmin", "local-admin-pw").success
        for _ in range(3):
            result = log_in(ldap_pacs, "alice", "alice-pw")
            assert not result.success and result.reason == UNAVAILABLE_REASON
        assert local_user("alice").failed_attempts == 0  # no password was checked
        assert not log_in(ldap_pacs, "nobody", "whatever").success
        kinds = [kind for kind, _ in ldap_pacs.recorded_alerts]
        assert kinds == ["ldap_unavailable"]  # one alert for the outage, not one per login
        assert "Can't contact LDAP server" in ldap_pacs.recorded_alerts[0][1]
    finally:
        slapd.resume()
    assert log_in(ldap_pacs, "alice", "alice-pw").success
    slapd.pause()  # a new outage after the directory answered again: a new alert
    try:
        assert not log_in(ldap_pacs, "alice", "alice-pw").success
    finally:
        slapd.resume()
    assert len(ldap_pacs.recorded_alerts) == 2


def test_without_fallback_nobody_logs_in_while_slapd_is_down(pacs, slapd):
    configure(pacs, slapd, fallback_to_local=False)
    make_local_account("localadmin", "local-admin-pw", profile="system administrator")
    assert not log_in(pacs, "localadmin", "local-admin-pw").success  # unknown to the directory
    slapd.pause()
    try:
        result = log_in(pacs, "localadmin", "local-admin-pw")
        assert not result.success and result.reason == UNAVAILABLE_REASON
    finally:
        slapd.resume()
    assert [kind for kind, _ in pacs.recorded_alerts] == ["ldap_unavailable"]


def test_with_fallback_a_login_unknown_to_the_directory_is_a_local_account(ldap_pacs):
    make_local_account("localadmin", "local-admin-pw", profile="system administrator")
    result = log_in(ldap_pacs, "localadmin", "local-admin-pw")
    assert result.success and result.method == "local"
    assert not log_in(ldap_pacs, "localadmin", "wrong").success


def test_a_server_that_never_answers_costs_the_timeout_then_falls_back(pacs, slapd):
    silent = socket.socket()  # accepts connections (kernel backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        uri = f"ldap://127.0.0.1:{silent.getsockname()[1]}/"
        configure(pacs, slapd, uris=[uri], operation_timeout=1, connect_timeout=1)
        make_local_account("localadmin", "local-admin-pw")
        assert log_in(pacs, "localadmin", "local-admin-pw").success
    finally:
        silent.close()
    assert [kind for kind, _ in pacs.recorded_alerts] == ["ldap_unavailable"]


def test_a_refused_service_account_is_an_alert_not_a_user_failure(pacs, slapd):
    configure(pacs, slapd, service_password="not-the-service-password", fallback_to_local=False)
    result = log_in(pacs, "alice", "alice-pw")
    assert not result.success and result.reason == UNAVAILABLE_REASON
    kind, message = pacs.recorded_alerts[0]
    assert kind == "ldap_unavailable" and "service account" in message
    check = plugin.test_connection(pacs)
    assert not check.ok and "service account" in check.message


# -- TLS ----------------------------------------------------------------------------------------


def test_starttls_with_the_test_ca(pacs, slapd, pki):
    configure(pacs, slapd, start_tls=True, ca_file=str(pki.ca_file))
    assert log_in(pacs, "alice", "alice-pw").success
    check = plugin.test_connection(pacs)
    assert check.ok and check.details["tls"] == "StartTLS"


def test_ldaps_with_the_test_ca_and_refused_with_another_ca(pacs, slapd, pki):
    configure(pacs, slapd, uris=[slapd.ldaps_uri], ca_file=str(pki.ca_file))
    assert log_in(pacs, "alice", "alice-pw").success
    assert plugin.test_connection(pacs).details["tls"] == "LDAPS"

    configure(pacs, slapd, uris=[slapd.ldaps_uri], ca_file=str(pki.other_ca_file))
    assert not plugin.test_connection(pacs).ok
    result = log_in(pacs, "alice", "alice-pw")
    assert not result.success and result.reason == UNAVAILABLE_REASON
    assert pacs.recorded_alerts


def test_certificate_check_can_be_turned_off(pacs, slapd, pki):
    uris = [slapd.ldaps_uri]
    configure(pacs, slapd, uris=uris, ca_file=str(pki.other_ca_file), verify_certificate=False)
    assert log_in(pacs, "alice", "alice-pw").success


def test_the_uris_are_tried_in_order(pacs, slapd):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead = f"ldap://127.0.0.1:{probe.getsockname()[1]}/"
    configure(pacs, slapd, uris=[dead, slapd.ldap_uri])
    assert log_in(pacs, "alice", "alice-pw").success
    assert pacs.recorded_alerts == []


def test_starttls_refused_with_another_ca(pacs, slapd, pki):
    configure(pacs, slapd, start_tls=True, ca_file=str(pki.other_ca_file))
    check = plugin.test_connection(pacs)
    assert not check.ok


def test_a_missing_ca_file_is_reported_not_crashed(ldap_pacs, slapd, tmp_path):
    missing = str(tmp_path / "gone-ca.pem")
    configure(ldap_pacs, slapd, start_tls=True, ca_file=missing)
    check = plugin.test_connection(ldap_pacs)
    assert not check.ok and missing in check.message
    result = log_in(ldap_pacs, "alice", "alice-pw")
    assert not result.success
    assert [kind for kind, _ in ldap_pacs.recorded_alerts] == ["ldap_unavailable"]
    with connection():
        assert PluginFailureRecord.select().count() == 0  # handled, not a plugin crash


# -- settings and the settings page's checks ------------------------------------------------


def test_the_service_password_is_stored_encrypted(ldap_pacs):
    with connection():
        stored = PluginState.get(PluginState.name == "ldap_auth").settings
        settings = ldap_pacs.plugin_settings("ldap_auth")
    assert SERVICE_PASSWORD not in stored
    assert json.loads(stored)["service_password"].startswith("enc:")
    assert ldap_pacs.secrets.decrypt(settings["service_password"]) == SERVICE_PASSWORD
    with connection():  # saving other settings keeps it, encrypted once
        ldap_pacs.save_plugin_settings("ldap_auth", {"operation_timeout": 7})
        again = ldap_pacs.plugin_settings("ldap_auth")["service_password"]
    assert ldap_pacs.secrets.decrypt(again) == SERVICE_PASSWORD


@pytest.mark.parametrize(
    "changes",
    [
        {"uris": ["http://127.0.0.1:389/"]},
        {"uris": ["ldaps://127.0.0.1:636/"], "start_tls": True},
        {"bind_mode": "direct", "user_dn_template": "uid=alice,ou=people"},
        {"profile_mapping": []},
        {"profile_mapping": [{"group": "admins"}]},
        {"group_member_attribute": "memberUid"},
        {"operation_timeout": 0},
    ],
)
def test_invalid_settings_are_refused(ldap_pacs, slapd, changes):
    with connection(), pytest.raises(ValidationError):
        ldap_pacs.save_plugin_settings("ldap_auth", {**settings_for(slapd), **changes})


def test_unconfigured_plugin_lets_local_accounts_decide(pacs):
    make_local_account("localadmin", "local-admin-pw")
    assert log_in(pacs, "localadmin", "local-admin-pw").success
    assert not plugin.test_connection(pacs).ok


def test_test_login_shows_groups_and_profile_and_changes_nothing(ldap_pacs):
    found = plugin.test_login(ldap_pacs, "carol", "carol-pw")
    assert found.ok and found.dn == user_dn("carol")
    assert sorted(found.groups) == ["admins", "radiologists"]
    assert found.profile == "system administrator"
    assert found.attributes["email"] == "carol@example.org"
    bob = plugin.test_login(ldap_pacs, "bob", "bob-pw")
    assert bob.profile == "referring" and bob.services == ["cardiology", "emergency"]
    dave = plugin.test_login(ldap_pacs, "dave", "dave-pw")
    assert not dave.ok and dave.groups == [] and dave.profile is None
    assert not plugin.test_login(ldap_pacs, "carol", "wrong").ok
    assert "no directory entry" in plugin.test_login(ldap_pacs, "zoe", "x").message
    with connection():
        assert User.select().count() == 0 and AuditEvent.select().count() == 0


def test_test_connection_reports_the_bind_and_nesting(ldap_pacs):
    check = plugin.test_connection(ldap_pacs)
    assert check.ok
    assert check.details["bound_as"] == SERVICE_DN
    assert check.details["nested_groups"] == "off"


def test_an_unknown_mapped_profile_is_refused_clearly(pacs, slapd):
    configure(pacs, slapd, profile_mapping=[{"group": "radiologists", "profile": "no such"}])
    result = log_in(pacs, "alice", "alice-pw")
    assert not result.success and "does not exist" in result.reason
