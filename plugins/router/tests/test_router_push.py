"""PUSH to a real DCMTK storescp: byte-identical delivery, a destination that is
down (the job waits with its error), retry, delivered once, no second send
by the same rule, time windows, preferred and impossible transfer syntaxes,
and the retention hold while a send is pending."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pacscore_router import rules as router_rules
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from router_fixtures import DEST_AET, make_study, wait_until

from pacscore.db import connection, utcnow
from pacscore.models import Job, OutboxEvent
from tests.conftest import pydicom_test_files
from tests.dicomgen import dataset_bytes

pytestmark = pytest.mark.timeout(120)


def push_rule(name: str = "to-dest", node: str = "dest", **extra) -> dict:
    action = {"type": "PUSH", "node": node, **extra.pop("action", {})}
    return {"name": name, "actions": [action], **extra}


def received_sop_uids(scp) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files())


def job_row(job_id: int) -> Job:
    with connection():
        return Job.get_by_id(job_id)


def test_push_delivers_the_study_byte_identically_once(db_url, router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs(db_url)
    router.add_node("dest", DEST_AET, dest.port)
    router.configure(rules=[push_rule()])
    router.start()
    files = make_study(tmp_path / "in", count=3, modality="CT")
    for path in files:
        router.store(path)

    wait_until(lambda: len(dest.files()) == 3, what="3 instances at storescp")
    wait_until(router.idle, what="router idle")
    by_sop = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    for received in dest.files():
        sop = str(dcmread(received, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(received) == dataset_bytes(by_sop[sop])
    assert [j.state for j in router.jobs()] == ["done"]
    assert {d.state for d in router.deliveries()} == {"sent"}

    # the study becomes stable again (a late duplicate event): nothing is sent twice
    router.pacs.hooks.relay.on_study_stable(
        pacs=router.pacs, study_uid=_study_uid(files[0]), patient_id="PAT1", num_instances=3
    )
    wait_until(router.idle)
    assert len(dest.files()) == 3 and len(router.jobs()) == 1


def _study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_a_destination_down_leaves_a_pending_job_then_retry_delivers_once(
    router_pacs, storescp, tmp_path
):
    dest = storescp()
    dest.stop()  # declared but down
    router = router_pacs()
    router.add_node("dest", DEST_AET, dest.port)
    router.configure(rules=[push_rule()], retry_schedule=[3600])
    router.start()
    files = make_study(tmp_path / "in", count=2)
    for path in files:
        router.store(path)

    job = wait_until(
        lambda: next((j for j in router.jobs() if j.attempts and j.state == "pending"), None),
        what="a failed attempt",
    )
    assert "association with dest (DEST@127.0.0.1" in job.last_error
    assert job.next_attempt > utcnow() + timedelta(minutes=50)
    assert {d.state for d in router.deliveries()} == {"queued"}
    study_uid = _study_uid(files[0])
    holds, failed = router.pacs.hooks.relay.retention_holds(
        pacs=router.pacs, study_uids=[study_uid, "1.2.3.4"]
    )
    assert holds == [("router", {study_uid: f"router: send to dest is pending (job {job.id})"})]
    assert failed == []

    dest.start()
    assert router.pacs.jobs.retry_now(job.id)
    wait_until(lambda: job_row(job.id).state == "done", what="the retried job done")
    assert received_sop_uids(dest) == sorted(
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files
    )
    assert job_row(job.id).attempts == 2
    holds, failed = router.pacs.hooks.relay.retention_holds(
        pacs=router.pacs, study_uids=[study_uid]
    )
    assert holds == failed == []

    # done jobs retried again send nothing more; a forced resend sends again
    router.pacs.jobs.retry_now(job.id)
    wait_until(router.idle)
    assert len(dest.files()) == 2
    with connection():
        router_rules.resend_study(router.pacs, "to-dest", study_uid)
    wait_until(lambda: len(dest.files()) == 4, what="the forced resend")


def test_stores_owe_the_router_no_event_without_a_per_instance_rule(router_pacs, tmp_path):
    router = router_pacs()  # not started: the events stay in the outbox
    router.add_node("dest", DEST_AET, 1)

    def events_after_storing_one(folder: str) -> int:
        router.store(make_study(tmp_path / folder, 1)[0])
        with connection():
            return OutboxEvent.select().where(OutboxEvent.hook == "on_store").count()

    assert events_after_storing_one("none") == 0  # no rule at all
    router.configure(rules=[push_rule()])  # per study: it waits for on_study_stable
    assert events_after_storing_one("per-study") == 0
    router.configure(rules=[push_rule(action={"per_instance": True}, enabled=False)])
    assert events_after_storing_one("disabled") == 0
    router.configure(rules=[push_rule(action={"per_instance": True})])
    assert events_after_storing_one("per-instance") == 1


def test_per_instance_push_and_filters(router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs()
    router.add_node("dest", DEST_AET, dest.port)
    only_chest_mr = push_rule(
        "mr-chest",
        action={"per_instance": True},
        filters={
            "combine": "ALL",
            "items": [{"tag": "StudyDescription", "pattern": "*thorax*"}],
            "calling_ae": "MOD?",
            "modality": "MR",
        },
    )
    no_institution = push_rule(
        "not-from-clinic",
        node="dest",
        action={"per_instance": True},
        filters={"combine": "NONE", "items": [{"tag": "(0008,0080)", "pattern": "CLINIC*"}]},
    )
    router.configure(rules=[only_chest_mr, no_institution])
    router.start()
    # accents and case are ignored: "Thorax" matches "*THORAX*" and "Clínic" matches CLINIC*
    wanted = make_study(tmp_path / "a", 1, modality="MR", study_description="IRM Thorax",
                        institution="Clínic du lac")[0]  # fmt: skip
    wrong_modality = make_study(tmp_path / "b", 1, modality="CT", study_description="thorax",
                                institution="CLINIC")[0]  # fmt: skip
    from_elsewhere = make_study(tmp_path / "c", 1, modality="MR", study_description="THORAX",
                                institution="clinic")[0]  # fmt: skip
    router.store(wanted, calling_ae="MOD1")
    router.store(wrong_modality, calling_ae="MOD1")
    router.store(from_elsewhere, calling_ae="OTHER")
    wait_until(router.idle)
    sop = str(dcmread(wanted, stop_before_pixels=True).SOPInstanceUID)
    assert received_sop_uids(dest) == [sop]
    assert [(d.rule, d.sop_uid) for d in router.deliveries()] == [("mr-chest", sop)]


def test_sends_outside_the_time_window_wait_for_it(router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs()
    router.add_node("dest", DEST_AET, dest.port)
    now = datetime.now()
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    window = {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}
    router.configure(rules=[push_rule(filters={"time_window": window})])
    router.start()
    router.store(make_study(tmp_path / "in", 1)[0])
    job = wait_until(lambda: next(iter(router.jobs()), None), what="the send job")
    opening = datetime.combine(start.date(), start.time().replace(second=0, microsecond=0))
    utc_opening = opening.astimezone(UTC).replace(tzinfo=None)  # naive = local time
    assert abs((job.next_attempt - utc_opening).total_seconds()) < 5
    assert job.state == "pending" and job.attempts == 0

    # retried by hand while the window is closed: postponed, not failed, nothing sent
    router.pacs.jobs.retry_now(job.id)
    wait_until(lambda: job_row(job.id).next_attempt > utcnow() + timedelta(minutes=30))
    row = job_row(job.id)
    assert (row.state, row.attempts) == ("pending", 0)
    assert "outside the time window of rule to-dest" in row.last_error
    assert dest.files() == []


def test_preferred_transfer_syntax_and_impossible_conversion(router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs()
    router.add_node("dest", DEST_AET, dest.port, preferred_transfer_syntax=ImplicitVRLittleEndian)
    router.configure(rules=[push_rule(action={"per_instance": True})])
    router.start()
    router.store(make_study(tmp_path / "in", 1)[0])  # stored explicit VR little endian
    wait_until(lambda: router.deliveries("sent"), what="the transcoded instance")
    assert dcmread(dest.files()[0]).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    # storescp accepts uncompressed syntaxes only: an MPEG-2 video cannot be decoded here
    router.store(mpeg2_instance(tmp_path / "video"))
    job = wait_until(
        lambda: next((j for j in router.jobs() if j.last_error), None), what="the failed send"
    )
    assert (
        "cannot convert MPEG2 Main Profile / Main Level to a syntax the node accepts"
        in job.last_error
    )
    assert "no pixel data decoder for MPEG2 Main Profile / Main Level" in job.last_error
    assert job.state == "pending" and len(dest.files()) == 1


def test_compressed_instances_are_decoded_or_encoded_for_the_node(router_pacs, storescp, tmp_path):
    plain = storescp("plain")  # uncompressed syntaxes only
    any_syntax = storescp("any", aet="ANY", extra=("+xa",))
    router = router_pacs()
    router.add_node("plain", DEST_AET, plain.port)
    router.add_node("rle", "ANY", any_syntax.port, preferred_transfer_syntax=RLELossless)
    router.configure(
        rules=[
            push_rule(
                "jpeg", node="plain", action={"per_instance": True}, filters={"modality": "OT"}
            ),
            push_rule("ct", node="rle", action={"per_instance": True}, filters={"modality": "CT"}),
        ]
    )
    router.start()
    jpeg = next(p for p in pydicom_test_files() if p.name == "SC_rgb_dcmtk_+eb+cy+n1.dcm")
    ct = make_study(tmp_path / "in", 1, rows=32, columns=32)[0]
    router.store(jpeg)
    router.store(ct)
    wait_until(lambda: len(router.deliveries("sent")) == 2, what="both sends")

    # JPEG Baseline decoded for a node that takes only uncompressed data
    received = dcmread(plain.files()[0])
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    expected = dcmread(jpeg)
    expected.decompress(generate_instance_uid=False)
    assert received.PixelData == expected.PixelData
    assert received.SOPInstanceUID == expected.SOPInstanceUID
    # a CT stored uncompressed, sent RLE Lossless as the node prefers, pixels unchanged
    received = dcmread(any_syntax.files()[0])
    assert received.file_meta.TransferSyntaxUID == RLELossless
    # (the test image has values beyond Bits Stored: compare the stored bits)
    assert (received.pixel_array == dcmread(ct).pixel_array).all()


def mpeg2_instance(folder: Path) -> Path:
    """A small instance claiming MPEG-2 video: nothing here can decode it."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    path = make_study(folder, 1)[0]
    ds = dcmread(path)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rules_are_validated_when_saved(router_pacs):
    from marshmallow import ValidationError

    router = router_pacs()
    router.add_node("dest", DEST_AET, 104)

    def refused(**settings) -> str:
        with pytest.raises(ValidationError) as caught:
            router.configure(**settings)
        return str(caught.value.messages)

    assert "unknown node(s): nowhere" in refused(rules=[push_rule(node="nowhere")])
    assert "unknown DICOM keyword or tag 'Nonsense'" in refused(
        rules=[push_rule(filters={"items": [{"tag": "Nonsense", "pattern": "x"}]})]
    )
    bad_priors = {"name": "r", "actions": [{"type": "AUTO_FETCHING", "node": "dest",
                                            "priors": "3 MG ; two US"}]}  # fmt: skip
    assert "expected a number of studies, found 'two' at character 8" in refused(rules=[bad_priors])
    assert "invalid time of day '25:00'" in refused(
        rules=[push_rule(filters={"time_window": {"start": "25:00", "end": "06:00"}})]
    )
    assert "duplicate rule name(s): a" in refused(rules=[push_rule("a"), push_rule("a")])
    assert router.pacs.plugin_settings("router")["rules"] == []

    # the plain rule operations a console page calls
    with connection():
        router_rules.save_rule(router.pacs, push_rule("second", priority=5))
        router_rules.save_rule(router.pacs, push_rule("first", priority=1))
        assert [r["name"] for r in router_rules.list_rules(router.pacs)] == ["first", "second"]
        assert router_rules.set_rule_enabled(router.pacs, "second", False)
        assert router_rules.get_rule(router.pacs, "second")["enabled"] is False
        assert router_rules.delete_rule(router.pacs, "first")
        assert not router_rules.delete_rule(router.pacs, "first")
        assert [r["name"] for r in router_rules.list_rules(router.pacs)] == ["second"]


def test_a_failed_send_holds_its_study_until_the_job_is_deleted(router_pacs, tmp_path):
    router = router_pacs()
    router.add_node("dest", DEST_AET, 9)  # nothing listens there
    router.configure(rules=[push_rule()], retry_schedule=[])  # the first failure is final
    files = make_study(tmp_path / "in", 2)
    for path in files:
        router.store(path)
    study_uid = _study_uid(files[0])
    pacs = router.pacs
    with connection():
        pacs.hooks.relay.on_study_stable(
            pacs=pacs, study_uid=study_uid, patient_id="PAT1", num_instances=2
        )
    job = pacs.jobs.take(["router.send"], "test")
    assert pacs.jobs.run(job) is False
    assert job_row(job.id).state == "failed"
    holds, failed = pacs.hooks.relay.retention_holds(pacs=pacs, study_uids=[study_uid])
    assert holds == [("router", {study_uid: f"router: send to dest is failed (job {job.id})"})]
    assert failed == []

    # the study stable again: the failed job already carries it, nothing new is queued
    with connection():
        pacs.hooks.relay.on_study_stable(
            pacs=pacs, study_uid=study_uid, patient_id="PAT1", num_instances=2
        )
    assert len(router.jobs()) == 1
    # the administrator deletes the failed job: the study is released, a new event queues again
    assert pacs.jobs.delete(job.id)
    assert pacs.hooks.relay.retention_holds(pacs=pacs, study_uids=[study_uid]) == ([], [])
    with connection():
        pacs.hooks.relay.on_study_stable(
            pacs=pacs, study_uid=study_uid, patient_id="PAT1", num_instances=2
        )
    assert [j.state for j in router.jobs()] == ["pending"]
    assert {d.state for d in router.deliveries()} == {"queued"}
