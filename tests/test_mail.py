"""The core's mail path: ``pacs.send_mail`` enqueues a durable ``mail`` job that
the built-in handler runs through ``prepare_mail`` and ``deliver_mail``;
``PermanentJobError`` fails a job at once; secret settings are encrypted.

The plugins here are small real plugins registered on a real Pacs (SQLite and
PostgreSQL); the SMTP side is tested with a real server in plugins/email.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from marshmallow import Schema, fields

from pacscore.db import connection, utcnow
from pacscore.hookspecs import hookimpl
from pacscore.jobs import JobHandler, PermanentJobError
from pacscore.models import Job, PluginState

pytestmark = pytest.mark.timeout(60)


class Deliverer:
    """Delivers by keeping the message; ``error`` makes it fail instead."""

    def __init__(self, error: Exception | None = None) -> None:
        self.delivered = []
        self.error = error

    @hookimpl
    def deliver_mail(self, message):
        if self.error:
            raise self.error
        self.delivered.append(message)
        return True


class Stamper:
    """A prepare_mail that adds a header naming itself (or refuses)."""

    def __init__(self, name: str, refuse: Exception | None = None) -> None:
        self.name = name
        self.refuse = refuse
        self.kinds = []

    @hookimpl
    def prepare_mail(self, message):
        if self.refuse:
            raise self.refuse
        self.kinds.append(message["X-Pacscore-Mail-Kind"])
        stamps = ",".join(filter(None, [message["X-Stamp"], self.name]))
        del message["X-Stamp"]
        message["X-Stamp"] = stamps
        return message


class Secretive:
    class _Schema(Schema):
        password = fields.String(load_default="", metadata={"secret": True})
        host = fields.String(load_default="")

    @hookimpl
    def settings_schema(self):
        return self._Schema()


def run_mail_jobs(pacs):
    ran = []
    while (job := pacs.jobs.take(["mail"], "test")) is not None:
        pacs.jobs.run(job)
        ran.append(pacs.jobs.get(job.id))
    return ran


def job_count() -> int:
    with connection():
        return Job.select().count()


def test_send_mail_enqueues_a_job_that_is_prepared_then_delivered(make_pacs):
    first, second, deliverer = Stamper("first"), Stamper("second"), Deliverer()
    pacs = make_pacs()
    for name, plugin in (("first", first), ("second", second), ("deliverer", deliverer)):
        pacs.hooks.register(plugin, name=name)
    job_id = pacs.send_mail(
        ["a@site.example", "b@site.example"], "Password reset", "open the link",
        html="<a href='x'>link</a>", kind="password_reset", reply_to="help@site.example",
    )  # fmt: skip
    with connection():
        queued = Job.get_by_id(job_id)
    assert (queued.kind, queued.state) == ("mail", "pending")
    assert json.loads(queued.payload)["to"] == ["a@site.example", "b@site.example"]
    assert deliverer.delivered == []  # nothing is sent by the caller's thread

    [job] = run_mail_jobs(pacs)
    assert job.state == "done"
    [message] = deliverer.delivered
    assert message["X-Stamp"] == "first,second"  # chained, in registration order
    assert first.kinds == ["password_reset"]
    assert "X-Pacscore-Mail-Kind" not in message  # removed before delivery
    assert message["To"] == "a@site.example, b@site.example"
    assert message["Reply-To"] == "help@site.example"
    assert message.get_body(("plain",)).get_content().strip() == "open the link"
    assert message.get_body(("html",)).get_content().strip() == "<a href='x'>link</a>"


@pytest.mark.parametrize(
    "to, subject, reply_to",
    [
        ([], "s", None),
        (["no-at-sign"], "s", None),
        (["a@b.example\r\nBcc: victim@x.example"], "s", None),
        (["a@b.example"], "two\r\nBcc: victim@x.example", None),
        (["a@b.example"], "s", "bad reply"),
    ],
)
def test_invalid_mail_is_refused_before_anything_is_queued(make_pacs, to, subject, reply_to):
    pacs = make_pacs()
    with pytest.raises(ValueError):
        pacs.send_mail(to, subject, "text", reply_to=reply_to)
    assert job_count() == 0


def test_without_a_delivering_plugin_the_job_waits_with_a_clear_error(make_pacs):
    pacs = make_pacs()
    pacs.send_mail(["a@site.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert (job.state, job.attempts) == ("pending", 1)
    assert "no plugin delivers e-mail" in job.last_error
    # the mail schedule starts at one minute: a server down for a while is the usual case
    assert utcnow() + timedelta(seconds=30) < job.next_attempt < utcnow() + timedelta(seconds=90)


def test_a_delivery_error_is_retried_and_a_permanent_one_fails_at_once(make_pacs):
    deliverer = Deliverer(ConnectionRefusedError("smtp down"))
    pacs = make_pacs()
    pacs.hooks.register(deliverer, name="deliverer")
    job_id = pacs.send_mail(["a@site.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "pending" and "smtp down" in job.last_error

    deliverer.error = PermanentJobError("550 no such user")
    pacs.jobs.retry_now(job_id)
    [job] = run_mail_jobs(pacs)
    assert (job.state, job.attempts) == ("failed", 2)
    assert "550 no such user" in job.last_error


def test_prepare_mail_refusing_aborts_the_delivery(make_pacs):
    deliverer = Deliverer()
    pacs = make_pacs()
    pacs.hooks.register(Stamper("guard", PermanentJobError("no clear text")), name="guard")
    pacs.hooks.register(deliverer, name="deliverer")
    pacs.send_mail(["a@site.example"], "s", "t")
    [job] = run_mail_jobs(pacs)
    assert job.state == "failed" and "no clear text" in job.last_error
    assert deliverer.delivered == []


def test_a_payload_that_cannot_be_a_message_fails_at_once(make_pacs):
    pacs = make_pacs(Deliverer())
    pacs.jobs.enqueue("mail", {"to": ["a@site.example"]})  # no subject, no text
    [job] = run_mail_jobs(pacs)
    assert job.state == "failed" and "invalid mail" in job.last_error


def test_permanent_job_error_fails_any_job_without_retry(make_pacs):
    class Plugin:
        @hookimpl
        def job_handlers(self):
            def refuse(pacs, payload):
                raise PermanentJobError("cannot ever work")

            return {"refuse": JobHandler(refuse, retry_schedule=[10, 20])}

    pacs = make_pacs(Plugin())
    job_id = pacs.jobs.enqueue("refuse", {})
    assert not pacs.jobs.run(pacs.jobs.take(["refuse"], "test"))
    job = pacs.jobs.get(job_id)
    assert (job.state, job.attempts, job.last_error) == (
        "failed", 1, "pacscore.jobs.PermanentJobError: cannot ever work"
    )  # fmt: skip


def test_secret_settings_are_stored_encrypted(make_pacs):
    pacs = make_pacs()
    pacs.hooks.register(Secretive(), name="secretive")
    with connection():
        saved = pacs.save_plugin_settings("secretive", {"password": "hunter2", "host": "h"})
        stored = json.loads(PluginState.get(PluginState.name == "secretive").settings)
        assert saved["password"] == stored["password"]
        assert stored["password"].startswith("enc:") and "hunter2" not in json.dumps(stored)
        assert stored["host"] == "h"
        # saving something else keeps the stored secret, encrypted once
        pacs.save_plugin_settings("secretive", {"host": "other"})
        read = pacs.plugin_settings("secretive")
    assert pacs.secrets.decrypt(read["password"]) == "hunter2"
    assert read["host"] == "other"
