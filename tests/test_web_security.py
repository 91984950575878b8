"""Sessions, lockout, password renewal, CSRF, API tokens, basic auth and the IP allow-list."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pacscore import hookimpl
from pacscore.db import connection, utcnow
from pacscore.models import ApiToken, AuditEvent, Node, User, WebSession
from tests.webclient import PASSWORD, Console, add_user, basic, bearer, web_app


class LoginRecorder:
    def __init__(self):
        self.attempts = []

    @hookimpl
    def on_login(self, login, success, method, source_ip):
        self.attempts.append((login, success, method, source_ip))


@pytest.fixture
def recorder():
    return LoginRecorder()


@pytest.fixture
def app(make_pacs, recorder):
    return web_app(make_pacs(recorder))


def settings(app, **changes):
    with connection():
        app.extensions["pacs"].settings.update_core(changes)


def test_login_opens_a_session_and_logout_ends_it_server_side(app, recorder):
    add_user("ann", "radiologist")
    console = Console(app)
    response = console.login("ann")
    assert response.status_code == 302 and response.location.endswith("/studies/")
    assert console.get("/studies/").status_code == 200
    cookie = console.client.get_cookie("pacscore_session").value
    assert console.post("/logout").status_code == 302
    # the old cookie, replayed, no longer opens anything
    replay = Console(app)
    replay.client.set_cookie("pacscore_session", cookie)
    assert replay.get("/studies/").status_code == 302
    assert recorder.attempts == [("ann", True, "local", "127.0.0.1")]
    with connection():
        assert WebSession.select().count() == 0
        assert AuditEvent.select().where(AuditEvent.action == "login").count() == 1


def test_failed_logins_lock_the_account_until_unlocked(app, recorder):
    settings(app, max_failed_logins=3)
    add_user("bob", "radiologist")
    console = Console(app)
    for _ in range(3):
        response = console.login("bob", "wrong password")
        assert response.status_code == 401
        assert "invalid credentials" in response.text
    response = console.login("bob")  # the right password, too late
    assert response.status_code == 401 and "account locked" in response.text
    # the API is locked out too, whatever the method
    assert console.client.get("/api/v1/studies", headers=basic("bob")).status_code == 401
    assert [a[1] for a in recorder.attempts] == [False] * 5

    add_user("admin2", "system administrator")
    admin = Console(app)
    admin.login("admin2")
    with connection():
        bob = User.get(User.login == "bob")
    assert bob.status == "locked"
    assert admin.post(f"/users/{bob.id}/unlock").status_code == 302
    assert console.login("bob").status_code == 302


def test_inactivity_logs_out(app):
    settings(app, inactivity_minutes=5)
    add_user("cid", "radiologist")
    console = Console(app)
    console.login("cid")
    assert console.get("/studies/").status_code == 200
    with connection():
        WebSession.update(last_seen=utcnow() - timedelta(minutes=6)).execute()
    response = console.get("/studies/")
    assert response.status_code == 302 and "/login" in response.location
    assert "inactive" in console.get(response.location).text
    with connection():
        assert WebSession.select().count() == 0


def test_session_duration_is_enforced_despite_activity(app):
    settings(app, session_minutes=60, inactivity_minutes=30)
    add_user("dan", "radiologist")
    console = Console(app)
    console.login("dan")
    with connection():
        WebSession.update(created=utcnow() - timedelta(minutes=61), last_seen=utcnow()).execute()
    response = console.get("/studies/")
    assert response.status_code == 302 and "/login" in response.location


def test_disabling_a_user_ends_their_sessions(app):
    add_user("eve", "radiologist")
    console = Console(app)
    console.login("eve")
    with connection():
        User.update(status="disabled").where(User.login == "eve").execute()
    assert console.get("/studies/").status_code == 302
    assert "account disabled" in console.login("eve").text


def test_password_renewal_forces_a_change_at_next_login(app):
    settings(app, password_renewal_days=90, min_password_length=12)
    add_user("fay", "radiologist", password_changed=utcnow() - timedelta(days=91))
    console = Console(app)
    response = console.login("fay")
    assert response.location.endswith("/account/password")
    # nothing else opens until the password is changed
    assert console.get("/studies/").location.endswith("/account/password")
    assert console.client.get("/api/v1/studies", headers=basic("fay")).status_code == 403
    too_short = {"current_password": PASSWORD, "new_password": "short", "confirm_password": "short"}
    assert "at least 12" in console.post("/account/password", too_short).text
    new = "a-brand-new-passphrase"
    change = {"current_password": PASSWORD, "new_password": new, "confirm_password": new}
    assert console.post("/account/password", change).status_code == 302
    assert console.get("/studies/").status_code == 200
    assert console.client.get("/api/v1/studies", headers=basic("fay", new)).status_code == 200


def test_forms_without_the_csrf_token_are_refused_and_change_nothing(app):
    add_user("gus", "system administrator")
    console = Console(app)
    console.login("gus")
    node = {"name": "pacs2", "aet": "PACS2", "host": "127.0.0.1", "port": "104"}
    response = console.client.post("/nodes/new", data=node)
    assert response.status_code == 400 and "CSRF" in response.text
    forged = console.client.post("/nodes/new", data={**node, "csrf_token": "forged"})
    assert forged.status_code == 400
    # the API, used with the console's cookie, needs the token in a header
    response = console.client.post("/api/v1/nodes", json={**node, "port": 104})
    assert response.status_code == 400 and "CSRF" in response.json["message"]
    with connection():
        assert not Node.select().exists()
    assert console.post("/nodes/new", node).status_code == 302
    with connection():
        assert Node.select().count() == 1


def test_login_form_needs_the_csrf_token(app):
    add_user("hal", "radiologist")
    client = app.test_client()
    response = client.post("/login", data={"login": "hal", "password": PASSWORD})
    assert response.status_code == 400


def test_api_tokens_are_created_shown_once_stored_hashed_and_revocable(app):
    add_user("ivy", "radiologist")
    console = Console(app)
    console.login("ivy")
    page = console.post("/account/tokens", {"name": "script"}).text
    token = page.split('id="new-token">')[1].split("<")[0]
    assert token.startswith("pct_")
    with connection():
        row = ApiToken.get()
    assert token not in row.token_hash and len(row.token_hash) == 64
    api = app.test_client()
    assert api.get("/api/v1/studies", headers=bearer(token)).status_code == 200
    assert api.get("/api/v1/nodes", headers=bearer(token)).status_code == 403  # same rights
    assert api.get("/api/v1/studies", headers=bearer("pct_wrong")).status_code == 401
    assert token not in console.get("/account").text
    console.post(f"/account/tokens/{row.id}/revoke")
    assert api.get("/api/v1/studies", headers=bearer(token)).status_code == 401


def test_basic_auth_and_unauthenticated_api(app):
    add_user("jay", "radiologist")
    client = app.test_client()
    response = client.get("/api/v1/studies")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/api/v1/studies", headers=basic("jay")).status_code == 200
    assert client.get("/api/v1/studies", headers=basic("jay", "nope")).status_code == 401
    bad = {"Authorization": "Basic %%%"}
    assert client.get("/api/v1/studies", headers=bad).status_code == 401
    other = {"Authorization": "Digest x"}
    assert client.get("/api/v1/studies", headers=other).status_code == 401


def test_ip_allow_list_applies_to_the_api(app):
    add_user("kim", "radiologist")
    client = app.test_client()
    settings(app, api_ip_allowlist=["10.0.0.0/8"])
    response = client.get("/api/v1/studies", headers=basic("kim"))
    assert response.status_code == 403 and "address" in response.json["message"]
    settings(app, api_ip_allowlist=["10.0.0.0/8", "127.0.0.1"])
    assert client.get("/api/v1/studies", headers=basic("kim")).status_code == 200


def test_next_parameter_never_redirects_off_site(app):
    add_user("lou", "radiologist")
    console = Console(app)
    response = console.client.post(
        "/login",
        data={"login": "lou", "password": PASSWORD, "next": "//evil.example/x",
              "csrf_token": console.csrf()},
    )  # fmt: skip
    assert response.location.endswith("/studies/")
