"""The ldap_auth console page against the real slapd: test connection, test login."""

from __future__ import annotations

import json
import logging

import pytest
from ldap_test_server import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD

from pacscore.db import connection
from pacscore.models import AuditEvent, User
from tests.webclient import Console, add_user, web_app

MAPPING = [
    {"group": "admins", "profile": "system administrator"},
    {"group": "referring", "profile": "referring"},
]


@pytest.fixture
def configured(pacs, slapd):
    with connection():
        pacs.save_plugin_settings(
            "ldap_auth",
            {
                "uris": [slapd.ldap_uri],
                "bind_mode": "search",
                "service_dn": SERVICE_DN,
                "service_password": SERVICE_PASSWORD,
                "base_dn": PEOPLE,
                "group_base_dn": GROUPS,
                "user_filter": "(objectClass=inetOrgPerson)",
                "profile_mapping": MAPPING,
                "services_mapping": [{"group": "referring", "services": ["cardiology"]}],
                "connect_timeout": 3,
                "operation_timeout": 5,
            },
        )
    return pacs


@pytest.fixture
def admin(configured):
    add_user("root", "system administrator")
    console = Console(web_app(configured))
    assert console.login("root").status_code == 302
    return console


def test_page_links_to_the_settings_form(admin):
    page = admin.get("/ldap/")
    assert page.status_code == 200
    assert 'href="/plugins/ldap_auth/settings"' in page.text
    assert admin.get("/plugins/ldap_auth/settings").status_code == 200


def test_connection_shows_tls_and_account(admin, slapd):
    page = admin.post("/ldap/test-connection").text
    assert "OK: connected to" in page
    assert f'<td class="account">{SERVICE_DN}</td>' in page
    assert '<td class="tls">none</td>' in page


def test_connection_error_is_shown(admin, configured):
    with connection():
        configured.save_plugin_settings("ldap_auth", {"service_password": "wrong-secret"})
    page = admin.post("/ldap/test-connection").text
    assert "Failed:" in page


def test_login_shows_groups_profile_services_and_counts_nothing(admin, caplog):
    caplog.set_level(logging.DEBUG)
    add_user("bob", "referring")  # an existing copy: a wrong test password must not count
    page = admin.post("/ldap/test-login", {"login": "bob", "password": "bob-pw"}).text
    assert "bob: accepted" in page
    assert '<td class="profile">referring</td>' in page
    assert '<td class="services">cardiology</td>' in page
    assert "bob-pw" not in page
    wrong = admin.post("/ldap/test-login", {"login": "bob", "password": "not-bob-pw"}).text
    assert "bob: refused" in wrong and "not-bob-pw" not in wrong
    assert "bob-pw" not in caplog.text
    with connection():
        assert User.select().count() == 2  # root and bob: no account created
        assert User.get(User.login == "bob").failed_attempts == 0
        details = [e.details for e in AuditEvent.select() if e.action.startswith("ldap_test")]
    assert len(details) == 2 and not any("bob-pw" in json.dumps(d) for d in details)


def test_login_form_validation(admin):
    response = admin.post("/ldap/test-login", {"login": "bob", "password": ""})
    assert response.status_code == 400 and "password" in response.text


def test_rights_csrf_and_anonymous(configured):
    app = web_app(configured)
    add_user("clerk", "secretary")
    clerk = Console(app)
    clerk.login("clerk")
    assert clerk.get("/ldap/").status_code == 403
    assert clerk.post("/ldap/test-login", {"login": "bob", "password": "bob-pw"}).status_code == 403
    add_user("root", "system administrator")
    admin = Console(app)
    admin.login("root")
    no_token = admin.client.post("/ldap/test-connection")
    assert no_token.status_code == 400
    anonymous = Console(app).get("/ldap/")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
