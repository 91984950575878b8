"""The HL7 message log page: filters, escaped message and ACK, replay with confirmation."""

from __future__ import annotations

import pacscore_hl7
import pytest
from pacscore_hl7.models import Hl7Message
from pacscore_hl7.service import process_text, recent, replay

from pacscore.db import connection
from pacscore.testing import console_client, make_pacs

ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|{cid}|P|2.5\r"
    "PID|1||{pid}^^^HOSP||<b>Angelo</b>^Sean||19700102|M\r"
    "ORC|NW|PLC{cid}|FIL{cid}||SC||^^^20240102090000\r"
    "OBR|1|PLC{cid}|FIL{cid}|CT^CT Thorax^L||||||||||||1^Ref^Doc||ACC{cid}|RP1|SPS1||||CT\r"
)


@pytest.fixture
def pacs(tmp_path):
    """SQLite (make_pacs's default) is enough: the log queries are the plugin's own."""
    pacs = make_pacs(tmp_path, plugins=[pacscore_hl7])
    yield pacs
    pacs.database.close_all()


@pytest.fixture
def clerk(pacs):
    return console_client(pacs, "secretary", login="clerk")


def test_log_lists_and_filters_messages_escaped(pacs, clerk):
    assert process_text(pacs, ORDER.format(cid="C1", pid="P1"), "").code == "AA"
    assert process_text(pacs, "garbage", "").code == "AR"
    page = clerk.get("/hl7/").text
    assert "ORM^O01" in page and "C1" in page
    assert "&lt;b&gt;Angelo&lt;/b&gt;" in page and "<b>Angelo" not in page
    assert "MSA|AA|C1" in page  # the ACK sent
    only_refused = clerk.get("/hl7/?outcome=AR").text
    assert only_refused.count('class="message"') == 1 and "PLCC1" not in only_refused
    by_id = clerk.get("/hl7/?control_id=C1&message_type=ORM").text
    assert by_id.count('class="message"') == 1
    assert clerk.get("/hl7/?control_id=NOPE").text.count('class="message"') == 0
    bad = clerk.get("/hl7/?outcome=XX&message_type=<x>")
    assert bad.status_code == 200 and "Must be one of" in bad.text and "like ORM^O01" in bad.text


def test_replay_asks_then_shows_the_new_outcome(pacs, clerk):
    first = process_text(pacs, ORDER.format(cid="C2", pid="P2"), "")
    pacs.worklist.delete(pacs.worklist.search(patient_id="P2")[0]["id"])
    confirm = clerk.get(f"/hl7/{first.log_id}/replay")
    assert confirm.status_code == 200 and 'name="confirm"' in confirm.text
    assert clerk.post(f"/hl7/{first.log_id}/replay").status_code == 200  # not confirmed
    assert pacs.worklist.search(patient_id="P2") == []
    response = clerk.post(f"/hl7/{first.log_id}/replay", {"confirm": "yes"}, follow_redirects=True)
    assert f"Replay of message {first.log_id}: AA" in response.text
    assert len(pacs.worklist.search(patient_id="P2")) == 1
    with connection():
        assert Hl7Message.select().where(Hl7Message.replay_of == first.log_id).count() == 1
    assert clerk.post("/hl7/999999/replay", {"confirm": "yes"}).status_code == 404


def test_a_large_message_is_shown_cut_and_replayed_whole(pacs, clerk):
    big = ORDER.format(cid="C9", pid="P9") + "NTE|1||" + "x" * 300_000 + "\r"
    first = process_text(pacs, big, "")
    assert first.code == "AA"
    listed = recent(limit=1)[0]
    assert (len(listed["text"]), listed["text_length"]) == (65536, len(big))
    page = clerk.get("/hl7/").text
    assert f"[{len(big) - 65536} more characters not shown" in page and len(page) < 100_000
    assert replay(pacs, first.log_id).code == "AA"
    with connection():
        again = Hl7Message.get(Hl7Message.replay_of == first.log_id)
    assert again.text == big


def test_rights_csrf_and_anonymous(pacs):
    first = process_text(pacs, ORDER.format(cid="C3", pid="P3"), "")
    doctor = console_client(pacs, "radiologist", login="doctor")
    assert doctor.get("/hl7/").status_code == 403
    assert doctor.post(f"/hl7/{first.log_id}/replay", {"confirm": "yes"}).status_code == 403
    clerk = console_client(pacs, "secretary", login="clerk", app=doctor.app)
    no_token = clerk.client.post(f"/hl7/{first.log_id}/replay", data={"confirm": "yes"})
    assert no_token.status_code == 400
    with connection():
        assert Hl7Message.select().count() == 1  # neither request replayed anything
    anonymous = doctor.app.test_client().get("/hl7/")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
