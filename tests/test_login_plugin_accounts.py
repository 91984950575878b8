"""The core side of plugin authentication (``authenticate``): accounts a plugin manages,
refusals that do or do not count toward lockout, secret plugin settings encrypted."""

from __future__ import annotations

import json

from marshmallow import Schema, fields

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import PluginState, User
from pacscore.users import hash_password, log_in


class Authority:
    """An authentication plugin whose next answer the test sets in ``verdict``."""

    def __init__(self) -> None:
        self.verdict: dict | None = None

    @hookimpl
    def authenticate(self, login, password):
        return self.verdict


class SecretSettings(Schema):
    url = fields.String(load_default="")
    password = fields.String(load_default="", metadata={"secret": True})


class WithSecret:
    @hookimpl
    def settings_schema(self):
        return SecretSettings()


ACCEPTED = {"accepted": True, "method": "authority", "user": {"profile": "radiologist"}}


def user(login: str) -> User:
    with connection():
        return User.get(User.login == login)


def test_an_account_a_plugin_manages_never_logs_in_with_a_local_password(make_pacs):
    authority = Authority()
    pacs = make_pacs(authority)
    authority.verdict = ACCEPTED
    assert log_in(pacs, "ann", "remote-pw").success
    assert (user("ann").auth_source, user("ann").password_hash) == ("authority", "")
    with connection():  # a hash left from an earlier life of the account
        User.update(password_hash=hash_password("local-pw")).where(User.login == "ann").execute()
    authority.verdict = None  # the plugin lets local accounts decide
    result = log_in(pacs, "ann", "local-pw")
    assert not result.success and result.reason == "invalid credentials"


def test_a_refusal_counts_toward_lockout_unless_the_authority_was_unavailable(make_pacs):
    authority = Authority()
    pacs = make_pacs(authority)
    with connection():
        pacs.settings.update_core({"max_failed_logins": 2})
    authority.verdict = ACCEPTED
    assert log_in(pacs, "ann", "pw").success

    authority.verdict = {"accepted": False, "method": "authority", "reason": "down",
                         "unavailable": True}  # fmt: skip
    for _ in range(3):
        assert not log_in(pacs, "ann", "pw").success
    assert (user("ann").failed_attempts, user("ann").status) == (0, "active")

    authority.verdict = {"accepted": False, "method": "authority", "reason": "wrong password"}
    for _ in range(2):
        assert not log_in(pacs, "ann", "pw").success
    assert user("ann").status == "locked"


def test_an_accepted_external_account_is_not_asked_for_a_local_password_change(make_pacs):
    authority = Authority()
    pacs = make_pacs(authority)
    with connection():
        User.create(login="ann", password_hash=hash_password("pw"), must_change_password=True)
    authority.verdict = ACCEPTED
    result = log_in(pacs, "ann", "pw")
    assert result.success and not result.must_change_password
    assert not user("ann").must_change_password


def test_secret_plugin_settings_are_encrypted_at_rest(make_pacs):
    pacs = make_pacs(WithSecret())
    with connection():
        pacs.save_plugin_settings("withsecret", {"url": "ldap://x", "password": "s3cret-value"})
        stored = json.loads(PluginState.get(PluginState.name == "withsecret").settings)
        pacs.save_plugin_settings("withsecret", {"url": "ldap://y"})  # the secret is kept
        kept = pacs.plugin_settings("withsecret")
    assert stored["url"] == "ldap://x" and stored["password"].startswith("enc:")
    assert "s3cret-value" not in json.dumps(stored)
    assert pacs.secrets.decrypt(kept["password"]) == "s3cret-value"  # encrypted once only


def test_an_empty_secret_stays_empty(make_pacs):
    pacs = make_pacs(WithSecret())
    with connection():
        pacs.save_plugin_settings("withsecret", {"password": ""})
        assert pacs.plugin_settings("withsecret")["password"] == ""
