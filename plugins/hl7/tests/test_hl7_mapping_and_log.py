"""The hl7 plugin in-process: reading fields, the editable mapping, ACK rules,
the message log and its replay."""

from __future__ import annotations

from datetime import timedelta

import pacscore_hl7
import pytest
from marshmallow import ValidationError
from pacscore_hl7.message import Message, decode
from pacscore_hl7.mllp import extract_frames
from pacscore_hl7.service import (
    forget_old_messages,
    process_frame,
    process_text,
    recent,
    replay,
)

from pacscore.models import Hl7Message, connection, utcnow
from tests.conftest import db_url, make_pacs  # noqa: F401 - fixtures

ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|{cid}|P|2.5\r"
    "PID|1||PAT1^^^HOSP||D\\T\\Angelo^Sean||19700102|M\r"
    "ORC|{control}|PLC1|FIL1||{status}||^^^20240102090000\r"
    "OBR|1|PLC1|FIL1|CT^CT Thorax^L||||||||||||1^Ref^Doc||ACC1|RP1|SPS1||||CT\r"
)


def order(cid: str, control: str = "NW", status: str = "SC") -> str:
    return ORDER.format(cid=cid, control=control, status=status)


@pytest.fixture
def pacs(make_pacs):  # noqa: F811 - the fixture imported above
    pacs = make_pacs()
    pacs.hooks.register(pacscore_hl7, name="hl7")
    return pacs


def test_fields_are_read_with_the_message_delimiters_and_escapes():
    assert Message.parse(order("C1")).message_type == ("ORM", "O01")
    text = "MSH#^~\\&#A#B#C#D#20240101##ORM^O01#C9#P#2.5\rPID#1##P9##Smith\\F\\Jones^Ann\r"
    parsed = Message.parse(text)
    assert parsed.control_id == "C9"
    assert parsed.components(parsed.segments[1].raw(5)) == ["Smith#Jones", "Ann"]
    latin1 = order("C2").replace("|2.5\r", "|2.5|||||FRA|8859/1\r", 1).replace("Sean", "Seán")
    latin1 = latin1.encode("latin-1")
    text, charset = decode(latin1)
    assert charset == "8859/1" and "Seán" in text


def test_mllp_frames_are_cut_out_of_a_stream():
    buffer = bytearray(b"noise\x0bA\x1c\r\x0bbroken\x0bB\x1c\r\x0bpart")
    frames, dropped = extract_frames(buffer)
    assert frames == [b"A", b"B"]
    assert dropped == len(b"noise") + len(b"broken\x0b")
    assert bytes(buffer) == b"\x0bpart"


def test_orders_apply_and_the_log_keeps_each_outcome(pacs):
    ack = process_frame(pacs, order("C1").encode(), "10.0.0.1:5000").decode()
    assert "MSA|AA|C1" in ack and ack.startswith("MSH|^~\\&|PACSCORE|RAD|HIS|HOSP|")
    entry = pacs.worklist.find_entry(placer_order="PLC1")
    assert entry["patient_name"] == "D&Angelo^Sean"
    assert entry["referring_physician"] == "Ref^Doc"
    assert entry["steps"][0]["start_date"] == "20240102"

    # a repeated NW updates the same entry; XO with IP starts it
    process_frame(pacs, order("C2").encode())
    process_frame(pacs, order("C3", "XO", "IP").encode())
    entries = pacs.worklist.search(status=["IN_PROGRESS"])
    assert [len(e["steps"]) for e in entries] == [1]

    # unknown order status: AE, nothing changed
    ack = process_frame(pacs, order("C4", "XO", "ZZ").encode()).decode()
    assert "MSA|AE|C4|unknown order status" in ack and "ERR|" in ack
    # an unsupported message type: AR
    adt = order("C5").replace("ORM^O01", "SIU^S12")
    assert "MSA|AR|C5|" in process_frame(pacs, adt.encode()).decode()
    # an ADT event we do not act on is accepted and logged as ignored
    ignored = order("C6").replace("ORM^O01", "ADT^A01")
    assert "MSA|AA|C6" in process_frame(pacs, ignored.encode()).decode()

    outcomes = [(m["control_id"], m["outcome"]) for m in reversed(recent())]
    assert outcomes == [
        ("C1", "AA"), ("C2", "AA"), ("C3", "AA"), ("C4", "AE"), ("C5", "AR"), ("C6", "AA")
    ]  # fmt: skip
    assert recent(outcome="AA")[0]["detail"] == "ADT^A01 ignored"
    with connection():
        assert Hl7Message.get(Hl7Message.control_id == "C1").peer == "10.0.0.1:5000"


def test_a_rejected_message_can_be_replayed_once_its_order_exists(pacs):
    cancel = process_text(pacs, order("X1", "CA", "CA"), "")
    assert cancel.code == "AE" and "unknown order" in cancel.detail
    process_text(pacs, order("X0"), "")
    again = replay(pacs, cancel.log_id)
    assert again.code == "AA"
    assert pacs.worklist.find_entry(placer_order="PLC1")["steps"][0]["status"] == "CANCELED"
    assert recent(limit=1)[0]["replay_of"] == cancel.log_id
    with pytest.raises(LookupError):
        replay(pacs, 999999)


def test_the_mapping_is_editable_and_validated(pacs):
    with connection():
        pacs.save_plugin_settings("hl7", {"mapping": {"accession_number": "OBR-19.1"}})
    # other targets keep their default
    assert pacs.plugin_settings("hl7")["mapping"] == {"accession_number": "OBR-19.1"}
    pacscore_hl7.service.forget_settings(pacs)  # re-read now, not in 2 s
    process_text(pacs, order("M1"), "")
    entry = pacs.worklist.find_entry(placer_order="PLC1")
    assert entry["accession_number"] == "RP1"
    assert entry["patient_id"] == "PAT1"
    with connection(), pytest.raises(ValidationError, match="invalid HL7 location"):
        pacs.save_plugin_settings("hl7", {"mapping": {"accession_number": "OBR 19"}})
    with connection(), pytest.raises(ValidationError, match="unknown mapping target"):
        pacs.save_plugin_settings("hl7", {"mapping": {"shoe_size": "PID-99"}})


def test_old_messages_leave_the_log(pacs):
    process_text(pacs, order("OLD"), "")
    process_text(pacs, order("NEW"), "")
    with connection():
        Hl7Message.update(received_at=utcnow() - timedelta(days=91)).where(
            Hl7Message.control_id == "OLD"
        ).execute()
    assert forget_old_messages(pacs) == 1
    assert [m["control_id"] for m in recent()] == ["NEW"]
