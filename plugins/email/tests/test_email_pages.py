"""The email plugin's console page and API route "send a test e-mail", against a real
SMTP server (aiosmtpd): the server's answer shown, validation, CSRF and rights."""

from __future__ import annotations

import pacscore_email
import pytest

from pacscore.db import connection
from tests.conftest import new_pacs
from tests.smtpserver import SmtpServer
from tests.webclient import Console, add_user, web_app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def smtp(tmp_path):
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def pacs(tmp_path):
    """Pages do not depend on the database: SQLite is enough."""
    pacs = new_pacs(tmp_path / "home", "sqlite:///index.db")
    pacs.hooks.register(pacscore_email, name="email")
    pacs.prepare_plugin_tables()
    yield pacs
    pacs.database.close_all()


@pytest.fixture
def app(pacs):
    return web_app(pacs)


def console_for(app, login: str, profile: str) -> Console:
    add_user(login, profile)
    console = Console(app)
    console.login(login)
    return console


def configure(pacs, **settings) -> None:
    with connection():
        pacs.save_plugin_settings("email", settings)


def test_page_sends_the_test_mail_and_shows_the_servers_answer(app, pacs, smtp):
    configure(pacs, **smtp.settings())
    console = console_for(app, "root", "system administrator")
    assert 'name="address"' in console.get("/email/test").text

    page = console.post("/email/test", {"address": "ops@example.org"})
    assert page.status_code == 200 and "the server accepted it" in page.text
    assert smtp.wait_for(1)[0].message["To"] == "ops@example.org"

    smtp.stop()  # nothing listens any more: the error is shown, not a stack trace
    page = console.post("/email/test", {"address": "ops@example.org"})
    assert "was not sent" in page.text and "Connection refused" in page.text


def test_page_shows_an_invalid_address_next_to_the_field(app, pacs, smtp):
    configure(pacs, **smtp.settings())
    console = console_for(app, "root", "system administrator")
    page = console.post("/email/test", {"address": "not an address"})
    assert page.status_code == 200 and "Not a valid email address." in page.text
    assert smtp.received == []


def test_api_answers_json(app, pacs, smtp):
    configure(pacs, **smtp.settings())
    console = console_for(app, "root", "system administrator")
    sent = console.api("POST", "/api/v1/email/test", json={"address": "ops@example.org"})
    assert sent.status_code == 200 and sent.json == {"sent": True, "error": ""}
    assert len(smtp.wait_for(1)) == 1

    bad = console.api("POST", "/api/v1/email/test", json={"address": "x", "cc": "y"})
    assert bad.status_code == 400
    assert bad.json["errors"] == {
        "address": ["Not a valid email address."],
        "cc": ["Unknown field."],
    }
    smtp.stop()
    failed = console.api("POST", "/api/v1/email/test", json={"address": "ops@example.org"})
    assert failed.status_code == 200 and failed.json["sent"] is False and failed.json["error"]


def test_csrf_and_rights_are_checked(app, pacs, smtp):
    configure(pacs, **smtp.settings())
    admin = console_for(app, "root", "system administrator")
    no_token = admin.client.post("/email/test", data={"address": "ops@example.org"})
    assert no_token.status_code == 400

    user = console_for(app, "joe", "simple user")
    assert user.get("/email/test").status_code == 403
    assert user.post("/email/test", {"address": "ops@example.org"}).status_code == 403
    api = user.api("POST", "/api/v1/email/test", json={"address": "ops@example.org"})
    assert api.status_code == 403

    anonymous = Console(app)
    assert anonymous.get("/email/test").status_code == 302
    assert anonymous.api("POST", "/api/v1/email/test", json={}).status_code == 401
    assert smtp.received == []
