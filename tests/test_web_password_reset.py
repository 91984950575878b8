"""Password reset by e-mail, end to end: the console form, a mail job delivered by the
email plugin to a real SMTP server (aiosmtpd), the link parsed from the mail, the new
password set through the console."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pacscore_email
import pytest

from pacscore.db import connection, utcnow
from pacscore.models import AuditEvent, Job, PasswordResetToken, User, WebSession
from pacscore.password_reset import _digest
from tests.smtpserver import SmtpServer
from tests.webclient import PASSWORD, Console, add_user, web_app

pytestmark = pytest.mark.timeout(120)

NEW_PASSWORD = "a-brand-new-secret"
LINK = re.compile(r"https?://\S+/password/reset/\S+")


@pytest.fixture
def smtp(tmp_path):
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def pacs(make_pacs, smtp):
    pacs = make_pacs()
    pacs.hooks.register(pacscore_email, name="email")
    pacs.prepare_plugin_tables()
    with connection():
        pacs.save_plugin_settings("email", {**smtp.settings(), "sender": "pacs@hospital.example"})
    return pacs


@pytest.fixture
def app(pacs):
    return web_app(pacs)


def settings(pacs, **changes):
    with connection():
        pacs.settings.update_core(changes)


def run_mail_jobs(pacs) -> int:
    ran = 0
    with connection():
        while (job := pacs.jobs.take(["mail"], "test")) is not None:
            pacs.jobs.run(job)
            ran += 1
    return ran


def ask_reset(app, login: str):
    return Console(app).post("/password/forgot", data={"login": login}, follow_redirects=True)


def mailed_link(pacs, smtp, count: int = 1) -> tuple[str, str]:
    """Deliver the queued mails; return the link (URL, path) of the last one."""
    with connection():
        kinds = [json.loads(j.payload)["kind"] for j in Job.select().where(Job.kind == "mail")]
    assert set(kinds) == {"password_reset"}
    run_mail_jobs(pacs)
    message = smtp.wait_for(count)[-1].message
    assert message["Subject"] == "Password reset"
    url = LINK.search(message.get_body(("plain",)).get_content()).group(0)
    return url, urlsplit(url).path


def reset_with(console: Console, path: str, password: str = NEW_PASSWORD, confirm=None):
    data = {"new_password": password, "confirm_password": password if confirm is None else confirm}
    return console.post(path, data=data, follow_redirects=True)


def audit_rows(action: str) -> list[dict]:
    with connection():
        rows = AuditEvent.select().where(AuditEvent.action == action).order_by(AuditEvent.id)
        return [{"actor": r.actor, "target": r.target, **json.loads(r.details)} for r in rows]


NEUTRAL = "If an account with a local password and an e-mail address matches"


def test_the_mailed_link_sets_a_new_password_once_and_ends_other_sessions(app, pacs, smtp):
    add_user("ann", "radiologist", email="ann@hospital.example", must_change_password=True,
             status="locked", locked_until=utcnow() + timedelta(hours=1))  # fmt: skip
    with connection():  # a session opened elsewhere before the lock
        user = User.get(User.login == "ann")
        WebSession.create(key_hash="x" * 64, user=user)
    assert 'id="forgot-password"' in Console(app).get("/login").text

    answer = ask_reset(app, "ann")
    assert NEUTRAL in answer.text
    url, path = mailed_link(pacs, smtp)
    assert smtp.received[0].recipients == ["ann@hospital.example"]
    assert url.startswith("http://localhost/password/reset/")  # the request's host
    with connection():  # only a digest of the secret is stored
        row = PasswordResetToken.get()
        assert row.token_hash == _digest(path.rsplit("/", 1)[1]) and path not in row.token_hash

    console = Console(app)
    form = console.get(path)
    assert 'id="reset-form"' in form.text and form.headers["Cache-Control"] == "no-store"
    done = reset_with(console, path)
    assert "Password changed" in done.text
    with connection():
        user = User.get(User.login == "ann")
        assert (user.status, user.must_change_password, user.failed_attempts) == (
            "active", False, 0)  # fmt: skip
        assert not WebSession.select().where(WebSession.user == user).exists()
    assert console.login("ann", NEW_PASSWORD).status_code == 302
    assert Console(app).login("ann", PASSWORD).status_code == 401

    # single use: the same link is refused with a clear message
    again = Console(app).get(path)
    assert again.status_code == 410 and "already used" in again.text
    assert reset_with(Console(app), path, "yet-another-password").status_code == 410
    assert [r["target"] for r in audit_rows("password_reset")] == ["ann"]
    assert audit_rows("password_reset_request")[0]["outcome"] == "sent"


def test_the_answer_is_neutral_and_no_mail_goes_to_unknown_ldap_or_disabled(app, pacs, smtp):
    add_user("lee", "radiologist", email="lee@hospital.example", auth_source="ldap")
    add_user("dan", "radiologist", email="dan@hospital.example", status="disabled")
    add_user("nomail", "radiologist")
    known = ask_reset(app, "ann-does-not-exist")
    for login in ("lee", "dan", "nomail", "nobody@hospital.example"):
        answer = ask_reset(app, login)
        assert answer.status_code == known.status_code == 200
        assert NEUTRAL in answer.text
    assert run_mail_jobs(pacs) == 0 and smtp.received == []
    with connection():
        assert PasswordResetToken.select().count() == 0
    outcomes = {r["actor"]: r["outcome"] for r in audit_rows("password_reset_request")}
    assert outcomes == {
        "ann-does-not-exist": "unknown account", "lee": "password managed by ldap",
        "dan": "account disabled", "nomail": "no e-mail address",
        "nobody@hospital.example": "unknown account",
    }  # fmt: skip


def test_a_link_is_also_found_by_e_mail_and_built_from_public_url(app, pacs, smtp):
    add_user("bob", "radiologist", email="bob@hospital.example")
    settings(pacs, public_url="https://pacs.hospital.example/")
    ask_reset(app, "Bob@Hospital.example")
    url, _ = mailed_link(pacs, smtp)
    assert url.startswith("https://pacs.hospital.example/password/reset/")


def test_an_expired_or_unknown_link_is_refused_clearly(app, pacs, smtp):
    add_user("ann", "radiologist", email="ann@hospital.example")
    settings(pacs, reset_link_minutes=1)
    ask_reset(app, "ann")
    _, path = mailed_link(pacs, smtp)
    with connection():
        row = PasswordResetToken.get()
        assert row.expires - row.created <= timedelta(minutes=1, seconds=1)
        row.expires = utcnow() - timedelta(seconds=1)  # time has passed
        row.save()
    expired = reset_with(Console(app), path)
    assert expired.status_code == 410 and "expired" in expired.text
    unknown = Console(app).get("/password/reset/not-a-real-token")
    assert unknown.status_code == 410 and "unknown" in unknown.text
    assert Console(app).login("ann").status_code == 302  # the password is unchanged


def test_csrf_confirmation_and_minimum_length_are_enforced(app, pacs, smtp):
    add_user("ann", "radiologist", email="ann@hospital.example")
    settings(pacs, min_password_length=14)
    ask_reset(app, "ann")
    _, path = mailed_link(pacs, smtp)
    console = Console(app)
    console.get(path)
    no_csrf = console.client.post(
        path, data={"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    )
    assert no_csrf.status_code == 400
    differ = reset_with(console, path, NEW_PASSWORD, confirm=NEW_PASSWORD + "x")
    assert differ.status_code == 400 and "differ" in differ.text
    short = reset_with(console, path, "short-pass")
    assert short.status_code == 400 and "at least 14 characters" in short.text
    elsewhere = Console(app)  # nothing changed, the link is still valid
    assert elsewhere.login("ann").status_code == 302
    assert elsewhere.get("/account").status_code == 200
    assert "Password changed" in reset_with(console, path, "long-enough-passphrase").text
    ended = elsewhere.get("/account")  # the session opened before the reset is over
    assert ended.status_code == 302 and "/login" in ended.headers["Location"]
    assert audit_rows("password_reset") and len(audit_rows("password_reset")) == 1


def test_requests_are_rate_limited_per_account_and_a_new_link_spends_the_old(app, pacs, smtp):
    add_user("ann", "radiologist", email="ann@hospital.example")
    for _ in range(3):
        assert NEUTRAL in ask_reset(app, "ann").text
    assert run_mail_jobs(pacs) == 1
    outcomes = [r["outcome"] for r in audit_rows("password_reset_request")]
    assert outcomes == ["sent", "rate limited", "rate limited"]
    _, first = mailed_link(pacs, smtp)

    settings(pacs, reset_mail_interval_minutes=0)
    ask_reset(app, "ann")
    _, second = mailed_link(pacs, smtp, count=2)
    assert "already used" in Console(app).get(first).text  # only the newest link works
    assert 'id="reset-form"' in Console(app).get(second).text


def test_an_administrator_sends_a_reset_link_from_the_users_page(app, pacs, smtp):
    add_user("boss", "system administrator")
    add_user("ann", "radiologist", email="ann@hospital.example")
    add_user("lee", "radiologist", email="lee@hospital.example", auth_source="ldap")
    admin = Console(app)
    admin.login("boss")
    with connection():
        ann, lee = (User.get(User.login == name).id for name in ("ann", "lee"))
    page = admin.get("/users/").text
    assert f"/users/{ann}/reset-link" in page and f"/users/{lee}/reset-link" not in page
    sent = admin.post(f"/users/{ann}/reset-link", follow_redirects=True)
    assert "A reset link was mailed to ann" in sent.text
    refused = admin.post(f"/users/{lee}/reset-link", follow_redirects=True)
    assert "No reset link for lee: password managed by ldap" in refused.text
    _, path = mailed_link(pacs, smtp)
    assert "Password changed" in reset_with(Console(app), path).text
    assert audit_rows("password_reset_request")[0]["actor"] == "boss"

    radiologist = Console(app)
    radiologist.login("ann", NEW_PASSWORD)
    assert radiologist.post(f"/users/{ann}/reset-link").status_code == 403
