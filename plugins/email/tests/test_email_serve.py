"""A real ``pacscore serve`` with the email plugin installed: a C-STORE that
finds no storage space raises ``storage_full``, whose mail reaches a real SMTP
server through the job workers; a mail queued while the SMTP server is down
survives a server restart and is delivered once both are back."""

from __future__ import annotations

import re
import time

import pytest

from tests.dicomgen import make_instance
from tests.smtpserver import SmtpServer

pytestmark = pytest.mark.timeout(180)


def configure(pacs, **settings) -> None:
    assignments = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    pacs.cli("plugins", "configure", "email", *assignments)


def failed_attempt(pacs) -> tuple[int, str] | None:
    """(id, error) of a pending mail job that already failed once."""
    listing = pacs.cli("jobs", "list", "--state", "pending").stdout
    match = re.search(r"^(\d+)\tmail\tpending\tattempts=1\t\S+ \S+\t(.*)$", listing, re.M)
    return (int(match.group(1)), match.group(2)) if match else None


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def test_storage_full_alert_is_mailed_and_survives_smtp_outage_and_restart(pacs_home, tmp_path):
    smtp = SmtpServer(tmp_path / "smtp").start()
    try:
        configure(pacs_home, smtp_host="127.0.0.1", smtp_port=smtp.port, site_name="PACS Nord",
                  quiet_period_minutes=0,
                  recipients='{"storage_full": ["ops@hospital.example"]}')  # fmt: skip
        # no folder can take a file: every C-STORE raises storage_full
        pacs_home.cli("storage", "set", "default", "--min-free-mb", str(2 * 10**9))
        pacs_home.start()
        result = pacs_home.storescu(make_instance(tmp_path / "in1"), extra=("-v",))
        assert "Refused: OutOfResources" in result.stdout + result.stderr

        [mail] = smtp.wait_for(1, timeout=30)
        assert mail.recipients == ["ops@hospital.example"]
        assert mail.message["Subject"] == "[PACS Nord] no storage folder can take new files"
        assert "no storage" in mail.message.get_body(("plain",)).get_content().lower()
    finally:
        smtp.stop()

    # the SMTP server is down: the next alert's mail waits in a pending job
    pacs_home.storescu(make_instance(tmp_path / "in2"))
    job_id, error = wait_for(lambda: failed_attempt(pacs_home), what="a failed mail attempt")
    assert "Connection refused" in error
    pacs_home.stop()

    back = SmtpServer(tmp_path / "smtp-back", port=smtp.port).start()
    try:
        pacs_home.start()
        pacs_home.cli("jobs", "retry", str(job_id))
        [mail] = back.wait_for(1, timeout=30)
        assert mail.recipients == ["ops@hospital.example"]
        done = re.compile(rf"^{job_id}\tmail\tdone\tattempts=2\t", re.M)
        wait_for(
            lambda: done.search(pacs_home.cli("jobs", "list").stdout), what="the mail job done"
        )
    finally:
        back.stop()
