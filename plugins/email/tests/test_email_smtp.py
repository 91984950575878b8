"""The email plugin against a real SMTP server (aiosmtpd on a free port):
alert notifications, STARTTLS/SSL/AUTH, retries while the server is down,
permanent failures on 5xx, the quiet period, and ``pacscore mail test``."""

from __future__ import annotations

import json
from datetime import timedelta

import pacscore_email
import pytest
from pacscore_email.models import MailAlertSent

from pacscore.db import connection, utcnow
from pacscore.models import Job, PluginState
from tests.conftest import PacsProcess, new_pacs
from tests.smtpserver import SmtpServer

pytestmark = [
    pytest.mark.timeout(120),
    # aiosmtpd does not count implicit TLS as TLS when it checks AUTH
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]


@pytest.fixture
def smtp_servers(tmp_path):
    started = []

    def start(**kwargs) -> SmtpServer:
        server = SmtpServer(tmp_path / f"smtp{len(started)}", **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def email_pacs(home, db_url, **settings):
    pacs = new_pacs(home, db_url)
    pacs.hooks.register(pacscore_email, name="email")
    pacs.prepare_plugin_tables()
    with connection():
        pacs.save_plugin_settings("email", settings)
    return pacs


def sqlite_pacs(tmp_path, **settings):
    """Transport tests: the database does not matter, SQLite is enough."""
    return email_pacs(tmp_path / "home", "sqlite:///index.db", **settings)


def run_mail_jobs(pacs) -> list[Job]:
    """Run every due mail job once, as a worker would; return them as left."""
    ran = []
    while (job := pacs.jobs.take(["mail"], "test")) is not None:
        pacs.jobs.run(job)
        ran.append(pacs.jobs.get(job.id))
    return ran


def parts(message):
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    return text, html


# -- notifications ------------------------------------------------------------------


def test_alert_is_mailed_to_its_recipients_over_starttls_with_auth(make_pacs, smtp_servers, db_url):
    smtp = smtp_servers(security="starttls", login="pacs", password="s3cret-pw")
    pacs = make_pacs()
    pacs.hooks.register(pacscore_email, name="email")
    pacs.prepare_plugin_tables()
    with connection():
        pacs.save_plugin_settings("email", {
            **smtp.settings(),
            "sender": "pacs@hospital.example",
            "site_name": "Radiology Nord",
            "server_name": "https://pacs.hospital.example",
            "recipients": {"low_disk_space": ["ops@hospital.example"],
                           "alerts": ["admin@hospital.example"]},
        })  # fmt: skip
        stored = PluginState.get(PluginState.name == "email").settings
    assert "s3cret-pw" not in stored
    assert json.loads(stored)["password"].startswith("enc:")

    pacs.alert("low_disk_space", "storage default has 812 MB free", storage="default", free_mb=812)
    [job] = run_mail_jobs(pacs)
    assert (job.state, job.last_error) == ("done", "")

    [mail] = smtp.wait_for(1)
    assert mail.recipients == ["ops@hospital.example"]
    assert mail.sender == "pacs@hospital.example"
    assert smtp.auth_attempts and all(ok for _, ok in smtp.auth_attempts)
    message = mail.message
    assert message["Subject"] == "[Radiology Nord] free disk space is low"
    assert message["From"] == "pacs@hospital.example"
    assert message["Message-ID"].endswith("@hospital.example>")
    assert "X-Pacscore-Mail-Kind" not in message
    text, html = parts(message)
    assert "storage default has 812 MB free" in text
    assert "Radiology Nord" in text and "https://pacs.hospital.example" in text
    assert "storage default has 812 MB free" in html
    assert '<a href="https://pacs.hospital.example">' in html


def test_the_same_alert_is_not_mailed_again_within_the_quiet_period(
    make_pacs, smtp_servers, db_url
):
    smtp = smtp_servers()
    pacs = make_pacs()
    pacs.hooks.register(pacscore_email, name="email")
    pacs.prepare_plugin_tables()
    with connection():
        pacs.save_plugin_settings("email", {
            **smtp.settings(), "quiet_period_minutes": 30,
            "recipients": {"alerts": ["admin@hospital.example"]},
        })  # fmt: skip
    for free in (900, 850, 800):
        pacs.alert("low_disk_space", f"{free} MB free", storage="default", free_mb=free)
    pacs.alert("low_disk_space", "300 MB free", storage="second", free_mb=300)
    pacs.alert("file_save_error", "cannot write <1.2.3>: disk full", sop_uid="1.2.3")
    assert len(run_mail_jobs(pacs)) == 3
    saved = [m.message for m in smtp.wait_for(3) if "saved" in m.message["Subject"]]
    text, html = parts(saved[0])
    assert "cannot write <1.2.3>: disk full" in text
    assert "cannot write &lt;1.2.3&gt;: disk full" in html  # escaped in HTML
    assert sorted(m.message["Subject"] for m in smtp.received) == [
        "[pacscore] a received file could not be saved",
        "[pacscore] free disk space is low",
        "[pacscore] free disk space is low",
    ]

    # the quiet period is in the database: a new Pacs (a restart) still honours it
    again = make_pacs()
    again.hooks.register(pacscore_email, name="email")
    again.prepare_plugin_tables()
    again.alert("low_disk_space", "700 MB free", storage="default", free_mb=700)
    assert run_mail_jobs(again) == []

    with connection():  # 31 minutes later
        MailAlertSent.update(last_sent=utcnow() - timedelta(minutes=31)).execute()
    again.alert("low_disk_space", "650 MB free", storage="default", free_mb=650)
    assert len(run_mail_jobs(again)) == 1
    text, _ = parts(smtp.wait_for(4)[3].message)
    assert "650 MB free" in text
    assert "3 similar alert(s) since the previous mail were not mailed" in text


def test_an_alert_without_recipients_sends_nothing(make_pacs, smtp_servers, db_url):
    smtp = smtp_servers()
    pacs = make_pacs()
    pacs.hooks.register(pacscore_email, name="email")
    pacs.prepare_plugin_tables()
    with connection():
        pacs.save_plugin_settings(
            "email", {**smtp.settings(), "recipients": {"storage_full": ["a@b.example"]}}
        )
    pacs.alert("low_disk_space", "1 MB free", storage="default")
    assert run_mail_jobs(pacs) == []
    assert pacs.hooks.failures == []


# -- transports ---------------------------------------------------------------------------


def test_implicit_tls_with_auth_and_a_plain_server(tmp_path, smtp_servers):
    ssl_server = smtp_servers(security="ssl", login="relay", password="pw")
    pacs = sqlite_pacs(tmp_path, **ssl_server.settings())
    job_id = pacs.send_mail(["a@hospital.example"], "over TLS", "hello", reply_to="sec@h.example")
    assert run_mail_jobs(pacs)[0].state == "done"
    [mail] = ssl_server.wait_for(1)
    assert mail.message["Reply-To"] == "sec@h.example"
    assert mail.message.get_content().strip() == "hello"
    assert pacs.jobs.get(job_id).state == "done"

    plain = smtp_servers()
    with connection():
        pacs.save_plugin_settings("email", {**plain.settings(), "login": "", "password": ""})
    pacs.send_mail(["b@hospital.example", "c@hospital.example"], "plain", "hi", html="<b>hi</b>")
    assert run_mail_jobs(pacs)[0].state == "done"
    [mail] = plain.wait_for(1)
    assert mail.recipients == ["b@hospital.example", "c@hospital.example"]
    assert parts(mail.message)[1].strip() == "<b>hi</b>"


def test_a_server_certificate_that_is_not_trusted_is_refused(tmp_path, smtp_servers):
    smtp = smtp_servers(security="starttls")
    settings = {**smtp.settings(), "tls_ca_file": ""}  # the system CAs do not know it
    pacs = sqlite_pacs(tmp_path, **settings)
    pacs.send_mail(["a@hospital.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in job.last_error
    assert smtp.received == []


def test_wrong_password_is_retried_not_sent(tmp_path, smtp_servers):
    smtp = smtp_servers(security="starttls", login="relay", password="right")
    pacs = sqlite_pacs(tmp_path, **{**smtp.settings(), "password": "wrong"})
    pacs.send_mail(["a@hospital.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "pending" and "SMTPAuthenticationError" in job.last_error
    assert smtp.received == []


# -- retries and permanent failures ------------------------------------------------------------


def test_smtp_down_the_job_is_retried_and_delivered_when_it_is_back(tmp_path, smtp_servers):
    down = SmtpServer(tmp_path / "down")  # its port, nothing listening yet
    pacs = sqlite_pacs(tmp_path, **down.settings())
    job_id = pacs.send_mail(["a@hospital.example"], "while down", "body")
    [job] = run_mail_jobs(pacs)
    assert (job.state, job.attempts) == ("pending", 1)
    assert "Connection refused" in job.last_error
    assert job.next_attempt > utcnow() + timedelta(seconds=30)  # the mail schedule: 1 minute
    assert run_mail_jobs(pacs) == []  # not due yet

    down.start()
    try:
        assert pacs.jobs.retry_now(job_id)
        [job] = run_mail_jobs(pacs)
        assert (job.state, job.attempts, job.last_error) == ("done", 2, "")
        assert down.wait_for(1)[0].message["Subject"] == "while down"
    finally:
        down.stop()


def test_a_5xx_recipient_refusal_fails_the_job_at_once_with_the_server_message(
    tmp_path, smtp_servers
):
    smtp = smtp_servers()
    smtp.handler.refuse["nobody@hospital.example"] = (
        "550 5.1.1 <nobody@hospital.example>: no such user"
    )
    pacs = sqlite_pacs(tmp_path, **smtp.settings())
    pacs.send_mail(["nobody@hospital.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert (job.state, job.attempts) == ("failed", 1)
    assert "550 5.1.1 <nobody@hospital.example>: no such user" in job.last_error

    # one recipient refused, the other served: failed (a retry would mail a copy again)
    pacs.send_mail(["nobody@hospital.example", "ok@hospital.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "failed"
    assert "delivered to ok@hospital.example" in job.last_error
    assert "no such user" in job.last_error
    assert [m.recipients for m in smtp.received] == [["ok@hospital.example"]]


def test_a_4xx_refusal_is_retried(tmp_path, smtp_servers):
    smtp = smtp_servers()
    smtp.handler.refuse["busy@hospital.example"] = "451 4.3.0 try again later"
    pacs = sqlite_pacs(tmp_path, **smtp.settings())
    job_id = pacs.send_mail(["busy@hospital.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "pending" and "451 4.3.0 try again later" in job.last_error
    del smtp.handler.refuse["busy@hospital.example"]
    pacs.jobs.retry_now(job_id)
    assert run_mail_jobs(pacs)[0].state == "done"
    assert len(smtp.received) == 1


def test_without_smtp_host_mail_waits_with_a_clear_error(tmp_path):
    pacs = sqlite_pacs(tmp_path)
    pacs.send_mail(["a@hospital.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "pending"
    assert "no plugin delivers e-mail" in job.last_error


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def sqlite_home(tmp_path):
    """A home on SQLite only: the command line does not depend on the database."""
    home = PacsProcess(tmp_path / "cli-home", "sqlite:///index.db").init()
    yield home
    home.stop()


def test_mail_test_command_sends_now_and_reports_errors(sqlite_home, smtp_servers):
    smtp = smtp_servers(security="starttls", login="relay", password="pw")
    sets = [f"{key}={value}" for key, value in smtp.settings().items()]
    assignments = [arg for a in [*sets, "site_name=Radiology Sud"] for arg in ("--set", a)]
    shown = sqlite_home.cli("plugins", "configure", "email", *assignments).stdout
    assert '"password": "enc:' in shown

    out = sqlite_home.cli("mail", "test", "me@hospital.example")
    assert f"test mail sent to me@hospital.example through 127.0.0.1:{smtp.port}" in out.stdout
    [mail] = smtp.wait_for(1)
    assert mail.recipients == ["me@hospital.example"]
    assert mail.message["Subject"] == "[Radiology Sud] test e-mail"

    bad = sqlite_home.cli("mail", "test", "not an address", check=False)
    assert bad.returncode == 1 and "invalid e-mail address" in bad.stderr

    smtp.stop()
    down = sqlite_home.cli("mail", "test", "me@hospital.example", check=False)
    assert down.returncode == 1
    assert "error: the test mail was not sent" in down.stderr and "refused" in down.stderr

    sqlite_home.cli("plugins", "disable", "email")
    disabled = sqlite_home.cli("mail", "test", "me@hospital.example", check=False)
    assert disabled.returncode == 1 and "plugin email is disabled" in disabled.stderr
