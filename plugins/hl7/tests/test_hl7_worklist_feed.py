"""The hl7 plugin in a real ``pacscore serve``: python-hl7's ``mllp_send`` feeds orders
and ADT, DCMTK ``findscu -W`` reads the worklist, pynetdicom reports MPPS."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacscore.dicom.scu import client_ae
from tests.conftest import db_url, pacs_home, run_dcmtk, wait_for_port  # noqa: F401 - fixtures
from tests.dicomgen import make_instance

MESSAGES = Path(__file__).parent / "messages"
MODALITY_AET = "MODALITY"


def mllp_send(server, name: str) -> list[str]:
    """Send a file of messages on one connection with python-hl7; return the MSA lines."""
    tool = Path(sys.executable).parent / "mllp_send"
    result = subprocess.run(
        [str(tool), "--loose", "--file", str(MESSAGES / name), "--port", str(server.hl7_port),
         "127.0.0.1"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text = result.stdout.decode("latin-1")
    return [line for line in text.replace("\r", "\n").splitlines() if line.startswith("MSA")]


def worklist_find(server, tmp_path: Path, *keys: str, aet: str = MODALITY_AET):
    """DCMTK findscu -W; returns (the responses as datasets, the tool's output)."""
    out = tmp_path / f"mwl-{time.monotonic_ns()}"
    out.mkdir()
    args = ["-W", "-v", "-aet", aet, "-aec", server.aet, "-X", "-od", str(out)]
    default_keys = [
        "PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
        "RequestedProcedureID", "RequestedProcedureDescription",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
    ]  # fmt: skip
    for key in [*default_keys, *keys]:
        args += ["-k", key]
    result = run_dcmtk("findscu", *args, "127.0.0.1", str(server.dicom_port))
    return [dcmread(p) for p in sorted(out.glob("*.dcm"))], result.stdout + result.stderr


def steps_by_accession(datasets) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for ds in datasets:
        sps = ds.ScheduledProcedureStepSequence[0]
        found.setdefault(ds.AccessionNumber, []).append(
            (sps.ScheduledProcedureStepID, sps.get("ScheduledProcedureStepStatus", ""))
        )
    return found


@pytest.fixture
def hl7_server(pacs_home):  # noqa: F811 - the fixture imported above
    pacs_home.cli(
        "node", "add", "modality", "--aet", MODALITY_AET, "--host", "127.0.0.1",
        "--port", "104", "--allow", "store,find,worklist",
    )  # fmt: skip
    pacs_home.start()
    wait_for_port(pacs_home.hl7_port, process=pacs_home.process)
    yield pacs_home
    pacs_home.stop()


def mpps(server, action: str, mpps_uid: str, ds: Dataset, aet: str = MODALITY_AET) -> int:
    ae = client_ae(aet, timeout=30)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        if action == "create":
            status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, mpps_uid)
        else:
            status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, mpps_uid)
    finally:
        assoc.release()
    return status.Status


def mpps_create_dataset(study_uid: str, sps_id: str, accession: str = "") -> Dataset:
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.ScheduledProcedureStepID = sps_id
    item.AccessionNumber = accession
    item.RequestedProcedureID = ""
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = ""
    ds.PatientID = ""
    ds.Modality = "CT"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = MODALITY_AET
    ds.PerformedProcedureStepStartDate = "20240102"
    ds.PerformedProcedureStepStartTime = "090500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedSeriesSequence = []
    return ds


def status_set(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240102"
    ds.PerformedProcedureStepEndTime = "093000"
    return ds


def test_orders_fill_the_worklist_and_mpps_moves_a_step(hl7_server, tmp_path):
    assert mllp_send(hl7_server, "orders.hl7") == [
        "MSA|AA|MSG0001",
        "MSA|AA|MSG0002",
        "MSA|AA|MSG0003",
    ]
    assert mllp_send(hl7_server, "omi.hl7") == ["MSA|AA|MSG0101"]

    found, output = worklist_find(
        hl7_server, tmp_path, "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus"
    )
    assert sorted(ds.AccessionNumber for ds in found) == [
        "ACC001", "ACC002", "ACC003", "ACC004", "ACC004"
    ], output  # fmt: skip
    first = next(ds for ds in found if ds.AccessionNumber == "ACC001")
    assert str(first.PatientName) == "Dupont^Jean^Pierre"
    assert first.PatientID == "PAT001"
    assert first.StudyInstanceUID == "1.2.826.0.1.3680043.10.1523.99.1"  # ZDS-1
    assert first.RequestedProcedureID == "RP001"
    assert first.RequestedProcedureDescription == "CT Thorax"
    sps = first.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledProcedureStepID, sps.ScheduledProcedureStepStatus) == (
        "CT", "SPS001", "SCHEDULED"
    )  # fmt: skip
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (
        "20240102", "090000"
    )  # fmt: skip
    # OMI: one step per IPC, with the station AE title of IPC-9
    omi = [ds for ds in found if ds.AccessionNumber == "ACC004"]
    assert sorted(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in omi) == [
        "SPS004A", "SPS004B"
    ]  # fmt: skip
    assert {ds.ScheduledProcedureStepSequence[0].ScheduledStationAETitle for ds in omi} == {
        "CTSTATION"
    }

    # matching in the query: modality, then a patient name with a wildcard
    only_mr, _ = worklist_find(
        hl7_server, tmp_path, "ScheduledProcedureStepSequence[0].Modality=MR"
    )
    assert [ds.AccessionNumber for ds in only_mr] == ["ACC002"]
    by_name, _ = worklist_find(hl7_server, tmp_path, "PatientName=dup*")
    assert [ds.AccessionNumber for ds in by_name] == ["ACC001"]

    # the modality starts then completes the step
    study_uid = first.StudyInstanceUID
    assert mpps(hl7_server, "create", "1.2.3.4.100", mpps_create_dataset(study_uid, "SPS001")) == 0
    started, _ = worklist_find(
        hl7_server, tmp_path, "AccessionNumber=ACC001",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
    )  # fmt: skip
    assert steps_by_accession(started) == {"ACC001": [("SPS001", "STARTED")]}
    assert mpps(hl7_server, "set", "1.2.3.4.100", status_set("COMPLETED")) == 0
    listing = hl7_server.cli("worklist", "list", "--status", "COMPLETED").stdout
    assert "COMPLETED" in listing and "ACC001" in listing, listing
    # a completed step leaves the default worklist (SCHEDULED and STARTED only)
    remaining, _ = worklist_find(hl7_server, tmp_path)
    assert "ACC001" not in {ds.AccessionNumber for ds in remaining}
    # a finished MPPS cannot change again
    assert mpps(hl7_server, "set", "1.2.3.4.100", status_set("DISCONTINUED")) == 0x0110


def test_cancel_discontinue_and_content_errors(hl7_server, tmp_path):
    mllp_send(hl7_server, "orders.hl7")
    acks = mllp_send(hl7_server, "cancel.hl7")
    assert acks[0] == "MSA|AA|MSG0201"
    assert acks[1] == "MSA|AA|MSG0202"
    # unknown order to cancel, missing PID-3: AE with the reason in MSA-3
    assert acks[2].startswith("MSA|AE|MSG0203|unknown order"), acks
    assert acks[3].startswith("MSA|AE|MSG0204|PID-3"), acks

    statuses = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus"
    canceled, _ = worklist_find(hl7_server, tmp_path, f"{statuses}=CANCELED")
    assert steps_by_accession(canceled) == {"ACC002": [("SPS002", "CANCELED")]}
    stopped, _ = worklist_find(hl7_server, tmp_path, f"{statuses}=DISCONTINUED")
    assert steps_by_accession(stopped) == {"ACC003": [("SPS003", "DISCONTINUED")]}
    active, _ = worklist_find(hl7_server, tmp_path)
    assert steps_by_accession(active) == {"ACC001": [("SPS001", "")]}
    # nothing was created by the refused order
    assert "PLC998" not in hl7_server.cli("worklist", "list").stdout


def test_adt_updates_demographics_and_merges_patients(hl7_server, tmp_path):
    mllp_send(hl7_server, "orders.hl7")
    mllp_send(hl7_server, "omi.hl7")
    # an archived study of the patient to be merged
    image = make_instance(tmp_path, patient_id="PAT004", patient_name="Moreau^Paul")
    assert hl7_server.storescu(image, aet=MODALITY_AET).returncode == 0

    assert mllp_send(hl7_server, "adt.hl7") == ["MSA|AA|MSG0301", "MSA|AA|MSG0302"]

    found, _ = worklist_find(hl7_server, tmp_path, "AccessionNumber=ACC001")
    assert str(found[0].PatientName) == "Dupont-Lefevre^Jean^Pierre"
    merged, _ = worklist_find(hl7_server, tmp_path, "AccessionNumber=ACC004")
    assert {ds.PatientID for ds in merged} == {"PAT100"}
    # the archive index answers with the surviving ID; the prior one is gone
    result = hl7_server.findscu(
        "QueryRetrieveLevel=STUDY", "PatientID=PAT100", "StudyInstanceUID", aet=MODALITY_AET
    )
    assert "PAT100" in result.stdout + result.stderr
    assert "StudyInstanceUID" in result.stdout + result.stderr
    old = hl7_server.findscu("QueryRetrieveLevel=PATIENT", "PatientID=PAT004", root="-P",
                             aet=MODALITY_AET)  # fmt: skip
    assert "PAT004" not in old.stdout.replace("PatientID=PAT004", "")
    # the stored file keeps its bytes
    assert b"PAT004" in image.read_bytes()


def test_latin1_names_round_trip_with_their_character_set(hl7_server, tmp_path):
    assert mllp_send(hl7_server, "latin1.hl7") == ["MSA|AA|MSG0401"]
    found, output = worklist_find(hl7_server, tmp_path, "ReferringPhysicianName")
    assert len(found) == 1, output
    ds = found[0]
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert str(ds.ReferringPhysicianName) == "Lefèvre^Noël"
    # matching ignores case and accents
    by_name, _ = worklist_find(hl7_server, tmp_path, "PatientName=MULLER*")
    assert len(by_name) == 1


def test_worklist_and_mpps_need_the_worklist_right(hl7_server, tmp_path):
    mllp_send(hl7_server, "orders.hl7")
    found, output = worklist_find(hl7_server, tmp_path, aet="STRANGER")
    assert found == []
    assert re.search(r"0x0?124", output), output
    ds = mpps_create_dataset("1.2.826.0.1.3680043.10.1523.99.1", "SPS001")
    assert mpps(hl7_server, "create", "1.2.3.4.200", ds, aet="STRANGER") == 0x0124
    # unknown references get an error status, not a silent success
    unknown = mpps_create_dataset("1.2.826.0.1.3680043.10.1523.99.1", "NOSUCHSTEP")
    assert mpps(hl7_server, "create", "1.2.3.4.201", unknown) == 0x0106
    assert mpps(hl7_server, "set", "1.2.3.4.202", status_set("COMPLETED")) == 0x0112
    assert mpps(hl7_server, "create", "1.2.3.4.203", ds) == 0
    assert mpps(hl7_server, "create", "1.2.3.4.203", ds) == 0x0111


DCMTK_QUERIES = Path("/usr/share/doc/dcmtk/examples/wlistqry")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dcmtk_example_worklist_queries_are_answered(hl7_server, tmp_path):
    """DCMTK's own example MWL queries (many optional keys, empty items, ranges)."""
    mllp_send(hl7_server, "orders.hl7")
    dumps = sorted(DCMTK_QUERIES.glob("wlistqry*.dump"))
    assert len(dumps) >= 10, "dcmtk's examples are missing (Debian package dcmtk)"
    answered = {}
    for dump in dumps:
        query = tmp_path / f"{dump.stem}.dcm"
        assert run_dcmtk("dump2dcm", str(dump), str(query)).returncode == 0
        out = tmp_path / dump.stem
        out.mkdir()
        result = run_dcmtk("findscu", "-W", "-v", "-aet", MODALITY_AET, "-aec", hl7_server.aet,
                           "-X", "-od", str(out), "127.0.0.1", str(hl7_server.dicom_port),
                           str(query))  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "Final Find Response (Success)" in output, output
        answered[dump.stem] = [dcmread(p) for p in sorted(out.glob("*.dcm"))]
    # no constraint but the name: every scheduled step, with the keys asked for
    assert len(answered["wlistqry1"]) == 3
    assert {ds.AccessionNumber for ds in answered["wlistqry1"]} == {"ACC001", "ACC002", "ACC003"}
    # an empty SPS item asks for every step attribute
    item = answered["wlistqry3"][0].ScheduledProcedureStepSequence[0]
    assert item.Modality and item.ScheduledProcedureStepID and item.ScheduledProcedureStepStartDate
    # station AA2 and modality DD schedule nothing here
    assert answered["wlistqry6"] == [] and answered["wlistqry4"] == []


# -- robustness of the listener ----------------------------------------------------------


def frame(text: str) -> bytes:
    return b"\x0b" + text.replace("\n", "\r").encode() + b"\x1c\r"


def read_ack(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data.decode("latin-1")


ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|BULK{n}|P|2.5\n"
    "PID|1||BULK{n}||Bulk^Patient\n"
    "ORC|NW|BPLC{n}|BFIL{n}||SC||^^^20240102090000\n"
    "OBR|1|BPLC{n}|BFIL{n}|CT^CT^L||||||||||||1^Ref^Doc||BACC{n}|BRP{n}|BSPS{n}||||CT"
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_listener_survives_garbage_half_frames_and_long_sessions(hl7_server):
    port = hl7_server.hl7_port
    # garbage outside any frame, then a framed non-HL7 payload: AR, connection kept
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        noise = bytes(b for b in range(256) if b not in (0x0B, 0x1C))  # no frame markers
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + noise)
        sock.sendall(frame("this is not HL7"))
        assert "MSA|AR|" in read_ack(sock)
        sock.sendall(frame(ORDER.format(n=0)))
        assert "MSA|AA|BULK0" in read_ack(sock)
        # an order of a version we do not read: AR 203, not applied (counted below)
        sock.sendall(frame(ORDER.format(n=900).replace("|P|2.5", "|P|9.9")))
        ack = read_ack(sock)
        assert "MSA|AR|BULK900|unsupported HL7 version '9.9'" in ack, ack
        assert "\rERR||MSH^1^12|203^Unsupported version id^HL70357|E|" in ack, ack
    # a client that disconnects mid-frame
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(frame(ORDER.format(n=1))[:40])
    # 100 messages on one connection, each answered in order
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for n in range(2, 102):
            sock.sendall(frame(ORDER.format(n=n)))
            assert f"MSA|AA|BULK{n}\r" in read_ack(sock)
    # several connections at once, interleaved; the half frame created nothing
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as one,
        socket.create_connection(("127.0.0.1", port), timeout=30) as two,
    ):
        one.sendall(frame(ORDER.format(n=200)))
        two.sendall(frame(ORDER.format(n=201)))
        assert "MSA|AA|BULK201" in read_ack(two)
        assert "MSA|AA|BULK200" in read_ack(one)
    listing = hl7_server.cli("worklist", "list", "--limit", "1000").stdout
    assert "BACC1\t" not in listing and "BACC900" not in listing
    assert listing.count("BACC") == 103, listing
    # on_shutdown stops the listener with the server
    assert hl7_server.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
