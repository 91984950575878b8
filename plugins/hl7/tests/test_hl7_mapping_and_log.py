"""The hl7 plugin in-process: reading fields, the editable mapping, ACK rules,
the message log and its replay."""

from __future__ import annotations

import random
from datetime import timedelta

import pacscore_hl7
import pytest
from marshmallow import ValidationError
from pacscore_hl7.message import Message, decode
from pacscore_hl7.mllp import FrameReader
from pacscore_hl7.models import Hl7Message
from pacscore_hl7.service import (
    forget_old_messages,
    process_frame,
    process_text,
    recent,
    replay,
)

from pacscore.db import connection, utcnow
from tests.conftest import db_url, make_pacs  # noqa: F401 - fixtures

ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|{cid}|P|2.5\r"
    "PID|1||PAT1^^^HOSP||D\\T\\Angelo^Sean||19700102|M\r"
    "ORC|{control}|PLC1|FIL1||{status}||^^^20240102090000\r"
    "OBR|1|PLC1|FIL1|CT^CT Thorax^L||||||||||||1^Ref^Doc||ACC1|RP1|SPS1||||CT\r"
)


NO_MARKERS = bytes.maketrans(b"\x0b\x1c", b"xy")  # frame bytes only where placed


def order(cid: str, control: str = "NW", status: str = "SC") -> str:
    return ORDER.format(cid=cid, control=control, status=status)


@pytest.fixture
def pacs(make_pacs):  # noqa: F811 - the fixture imported above
    pacs = make_pacs()
    pacs.hooks.register(pacscore_hl7, name="hl7")
    pacs.prepare_plugin_tables()
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
    reader = FrameReader(limit=16)
    frames = reader.feed(b"noise\x0bA\x1c\r\x0bbroken\x0bB\x1c\r\x0bpart")
    assert [(f.payload, f.too_large) for f in frames] == [(b"A", False), (b"B", False)]
    assert reader.dropped == len(b"noise") + len(b"\x0bbroken")
    assert reader.pending == len(b"part")
    # the rest of the frame, dripped: its CR comes alone, and is no garbage
    frames = [f for byte in b"ial\x1c\r" for f in reader.feed(bytes([byte]))]
    assert [f.payload for f in frames] == [b"partial"] and reader.dropped == len(b"noise") + 7
    # above the limit only the head is kept (up to HEAD_KEPT), and the size is told
    big = b"MSH|" + b"x" * 40
    frames = reader.feed(b"\x0b" + big[:20]) + reader.feed(big[20:] + b"\x1c\r\x0bC\x1c\r")
    assert [(f.payload, f.size, f.too_large) for f in frames] == [
        (big[:16], len(big), True), (b"C", 1, False)
    ]  # fmt: skip
    assert reader.pending == 0 and reader.dropped == len(b"noise") + 7


def test_frames_are_the_same_however_the_stream_is_cut():
    rng = random.Random(7)
    for _ in range(200):
        pieces = [
            rng.choice([b"\x0b{}\x1c\r", b"\x0b{}", b"{}\x1c", b"{}"]).replace(
                b"{}", rng.randbytes(rng.randint(0, 40)).translate(NO_MARKERS)
            )
            for _ in range(rng.randint(1, 12))
        ]
        stream, limit = b"".join(pieces), rng.randint(4, 30)
        whole, dripped = FrameReader(limit), FrameReader(limit)
        expected = [(f.payload, f.size) for f in whole.feed(stream)]
        got, n = [], 0
        while n < len(stream):
            step = rng.randint(1, 7)
            got += [(f.payload, f.size) for f in dripped.feed(stream[n : n + step])]
            n += step
        assert got == expected and dripped.dropped == whole.dropped, stream
        assert all(len(payload) <= limit for payload, _ in got)


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


def versioned(cid: str, version: str) -> str:
    return order(cid).replace("|P|2.5\r", f"|P|{version}\r", 1)


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("9.9", "unsupported HL7 version '9.9'"),
        ("2.2", "unsupported HL7 version '2.2'"),  # below the oldest supported
        ("2.9", "unsupported HL7 version '2.9'"),  # above the newest
        ("", "MSH-12 (version ID) is missing"),
    ],
)
def test_an_unsupported_version_is_refused_and_nothing_applied(pacs, version, reason):
    ack = process_frame(pacs, versioned("V1", version).encode(), "10.0.0.1:5000").decode()
    segments = ack.rstrip("\r").split("\r")
    assert segments[0].split("|")[11] == "2.5"  # the ACK is in a version we support
    assert segments[1].startswith(f"MSA|AR|V1|{reason}"), ack
    # HL7 table 0357: 203, where it lies (MSH-12), the reason in ERR-8
    assert segments[2].startswith("ERR||MSH^1^12|203^Unsupported version id^HL70357|E||||"), ack
    assert reason in segments[2]
    assert pacs.worklist.find_entry(placer_order="PLC1") is None
    logged = recent(limit=1)[0]
    assert (logged["control_id"], logged["outcome"], logged["ack"]) == ("V1", "AR", ack)
    assert logged["detail"].startswith(reason) and logged["text"] == versioned("V1", version)
    # a replay refuses it again
    assert replay(pacs, logged["id"]).code == "AR"
    assert pacs.worklist.find_entry(placer_order="PLC1") is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_oldest_and_newest_supported_versions_are_applied_and_answered_in_kind(pacs):
    oldest = process_frame(pacs, versioned("O1", "2.3").encode()).decode()
    assert "|P|2.3\rMSA|AA|O1\r" in oldest
    newest = process_frame(pacs, versioned("N1", "2.8.2^FRA").encode()).decode()
    assert "|P|2.8.2\rMSA|AA|N1\r" in newest
    assert [m["outcome"] for m in recent()] == ["AA", "AA"]
    assert pacs.worklist.find_entry(placer_order="PLC1")["accession_number"] == "ACC1"
    # the ERR of an AE follows the ACK's version: ERR-1 before 2.5, ERR-3 from 2.5 on
    wrong = order("E1", "XO", "ZZ").replace("|P|2.5\r", "|P|2.3\r", 1)
    old = process_frame(pacs, wrong.encode()).decode()
    assert "\rERR|^^^207&Application internal error&HL70357\r" in old, old
    wrong = order("E2", "XO", "ZZ").replace("|P|2.5\r", "|P|2.8.2\r", 1)
    new = process_frame(pacs, wrong.encode()).decode()
    assert "\rERR|||207^Application internal error^HL70357|E||||unknown order status" in new
