"""Echo, store, move and get driven by DCMTK peers against a running server."""

from __future__ import annotations

import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import StoragePresentationContexts, _config

from pacscore.dicom.scu import client_ae
from tests.conftest import (
    DCMTK_ENV,
    PacsProcess,
    dcmtk,
    free_port,
    pydicom_test_files,
    pynetdicom_test_files,
    run_dcmtk,
    wait_for_port,
)
from tests.dicomgen import dataset_bytes, make_instance


def dcmtk_reads_cleanly(path: Path) -> bool:
    """Some test files are deliberately malformed; DCMTK, the peer, is the judge."""
    result = run_dcmtk("dcmdump", "-M", str(path))
    return (
        result.returncode == 0
        and "E: " not in result.stderr
        and "multiple of 2" not in result.stderr
    )


def with_study_uids(path: Path, folder: Path) -> Path:
    """A copy of a file that lacks Study/Series UIDs, with UIDs added (pixel data untouched)."""
    ds = dcmread(path)
    ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / path.name
    ds.save_as(copy, enforce_file_format=True)
    return copy


def storable_files(folder: Path) -> list[Path]:
    """Test files of pydicom and pynetdicom covering every transfer syntax, then every
    (SOP class, transfer syntax) pair, with no SOP Instance UID twice."""
    storage_classes = {cx.abstract_syntax for cx in StoragePresentationContexts}
    candidates = []
    for path in pynetdicom_test_files() + pydicom_test_files():
        if "bad" in path.name or "no_meta" in path.name:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            ts, sop_class = str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID)
            uids = (str(ds.SOPInstanceUID),)
            if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
                path = with_study_uids(path, folder)
        except Exception:  # noqa: BLE001 - broken files are not storable
            continue
        if sop_class in storage_classes and dcmtk_reads_cleanly(path):
            candidates.append((path, ts, sop_class, uids[0]))
    # rare transfer syntaxes first: their only file may share a UID with a common one
    per_ts = defaultdict(int)
    for _, ts, _, _ in candidates:
        per_ts[ts] += 1
    candidates.sort(key=lambda c: per_ts[c[1]])
    chosen: dict[tuple, Path] = {}
    seen_uids: set[str] = set()
    for key_of in (lambda ts, cls: ts, lambda ts, cls: (cls, ts)):
        for path, ts, sop_class, uid in candidates:
            key = key_of(ts, sop_class)
            if key in chosen or uid in seen_uids:
                continue
            chosen[key] = path
            seen_uids.add(uid)
    return list(chosen.values())


class StoreSCP:
    """DCMTK storescp accepting every transfer syntax, as a move destination."""

    def __init__(self, folder: Path, aet: str = "DEST") -> None:
        self.folder, self.aet, self.port = folder, aet, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", aet, "+xa", "-od", str(folder), str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def storescp(tmp_path):
    scp = StoreSCP(tmp_path / "received")
    yield scp
    scp.stop()


def stored_dataset_bytes(server) -> dict[str, bytes]:
    """SOP Instance UID -> data set bytes of every file in the server's storage."""
    result = {}
    for path in (server.home / "storage").rglob("*.dcm"):
        if ".incoming" in path.parts:
            continue
        result[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = dataset_bytes(path)
    return result


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def raw_store(server, paths: list[Path], aet: str = "RAWSCU") -> list[int]:
    """Send files with pynetdicom exactly as they are on disk; return the statuses."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = client_ae(aet, timeout=30)
        for path in paths:
            ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            sop_class = str(dcmread(path, stop_before_pixels=True).SOPClassUID)
            ae.add_requested_context(sop_class, [ts])
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
        assert assoc.is_established
        statuses = [assoc.send_c_store(path).Status for path in paths]
        assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_echo(server):
    result = run_dcmtk("echoscu", "-aec", server.aet, "127.0.0.1", str(server.dicom_port))
    assert result.returncode == 0, result.stderr


def same_data_set(sent: bytes, stored: bytes) -> bool:
    # an odd-length deflated stream travels with one pad byte (PDVs are even)
    return stored in (sent, sent + b"\x00")


def test_every_sop_class_and_transfer_syntax_is_stored_and_retrieved_unchanged(
    server, storescp, tmp_path, db_url
):
    files = storable_files(tmp_path / "fixed")
    transfer_syntaxes = {str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                         for f in files}  # fmt: skip
    # implicit/explicit LE, big endian, deflate, JPEG baseline/lossless, JPEG-LS, J2K, RLE
    assert transfer_syntaxes >= {
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
    }  # fmt: skip
    assert raw_store(server, files) == [0] * len(files)
    sent = {sop_uid(f): dataset_bytes(f) for f in files}
    stored = stored_dataset_bytes(server)
    assert set(stored) == set(sent)
    for uid, data in sent.items():
        assert same_data_set(data, stored[uid]), f"{uid} was not stored as received"

    # a second pacscore keeps what it receives: C-MOVE must deliver the stored bytes
    second = PacsProcess(tmp_path / "second", "sqlite:///index.db", aet="SECOND").init().start()
    try:
        server.cli("node", "add", "second", "--aet", "SECOND", "--host", "127.0.0.1",
                   "--port", str(second.dicom_port))  # fmt: skip
        server.cli("node", "add", "dest", "--aet", storescp.aet, "--host", "127.0.0.1",
                   "--port", str(storescp.port))  # fmt: skip
        server.cli("node", "add", "mover", "--aet", "MOVER", "--host", "127.0.0.1",
                   "--port", "1", "--allow", "move")  # fmt: skip
        studies = "\\".join(sorted({str(dcmread(f).StudyInstanceUID) for f in files}))
        for destination in ("SECOND", storescp.aet):
            result = server.move_study(studies, destination, aet="MOVER")
            assert result.returncode == 0, result.stdout + result.stderr
        moved = stored_dataset_bytes(second)
    finally:
        second.stop()
    assert set(moved) == set(sent)
    for uid, data in moved.items():
        assert same_data_set(stored[uid], data), f"{uid} changed on its way out"

    # DCMTK's storescp (it re-encodes what it writes) received every instance too
    assert {sop_uid(p) for p in storescp.files()} == set(sent)


def test_storescu_stores_and_get_retrieves_the_same_data_sets(server, tmp_path):
    files = [make_instance(tmp_path / "in", patient_id="GET1", study_uid="1.2.3.4",
                           instance_number=i) for i in range(5)]  # fmt: skip
    result = server.storescu(*files)
    assert result.returncode == 0, result.stderr
    server.cli("node", "add", "ws", "--aet", "GETTER", "--host", "127.0.0.1", "--port", "1",
               "--allow", "get")  # fmt: skip
    out = tmp_path / "got"
    out.mkdir()
    result = run_dcmtk(
        "getscu", "-aet", "GETTER", "-aec", server.aet, "+xe", "-S", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3.4",
        "127.0.0.1", str(server.dicom_port), "-v",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"Number of Completed Suboperations\s*:\s*5", result.stdout + result.stderr)
    # getscu negotiates its own transfer syntax: compare decoded data sets
    # (byte identity is checked over C-MOVE, where the stored syntax is offered)
    stored = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in files}
    got = list(out.iterdir())
    assert len(got) == 5
    for path in got:
        ds = dcmread(path)
        assert ds == stored[str(ds.SOPInstanceUID)]


def test_duplicate_instance_is_acknowledged_and_the_first_copy_kept(server, tmp_path):
    first = make_instance(tmp_path / "a", sop_uid="1.2.3.9.1", patient_name="FIRST^COPY")
    second = make_instance(tmp_path / "b", sop_uid="1.2.3.9.1", patient_name="SECOND^COPY",
                           study_uid=dcmread(first).StudyInstanceUID,
                           series_uid=dcmread(first).SeriesInstanceUID)  # fmt: skip
    assert raw_store(server, [first, second]) == [0, 0]
    stored = stored_dataset_bytes(server)
    assert stored == {"1.2.3.9.1": dataset_bytes(first)}


def test_refused_services_for_undeclared_nodes_and_unknown_destination(server, tmp_path):
    path = make_instance(tmp_path, study_uid="1.2.3.5")
    assert server.storescu(path, aet="ANYONE").returncode == 0  # store: anyone by default

    result = server.findscu("QueryRetrieveLevel=STUDY", "StudyInstanceUID", aet="STRANGER",
                            extra=("-v",))  # fmt: skip
    assert re.search(r"0x0?124", result.stderr), result.stderr

    server.cli("node", "add", "finder", "--aet", "FINDER", "--host", "127.0.0.1", "--port", "1",
               "--allow", "find")  # fmt: skip
    result = server.move_study("1.2.3.5", "FINDER", aet="FINDER", extra=("-v",))
    assert re.search(r"0x0?124", result.stderr), result.stderr  # FINDER may find, not move

    server.cli("node", "add", "mover", "--aet", "MOVER", "--host", "127.0.0.1", "--port", "1",
               "--allow", "move")  # fmt: skip
    result = server.move_study("1.2.3.5", "NOBODY", aet="MOVER", extra=("-v",))
    assert "MoveDestinationUnknown" in result.stderr, result.stderr

    server.cli("settings", "--set", "store_from_declared_nodes_only=true")
    time.sleep(2.5)  # settings are re-read every 2 s
    other = make_instance(tmp_path / "other")
    result = server.storescu(other, aet="ANYONE", extra=("-v",))
    assert re.search(r"0x0?124", result.stderr), result.stderr
    result = server.storescu(other, aet="FINDER", extra=("-v",))  # declared, without store
    assert re.search(r"0x0?124", result.stderr), result.stderr
    server.cli("node", "add", "modality", "--aet", "CT01", "--host", "127.0.0.1", "--port", "1")
    time.sleep(2.5)
    assert server.storescu(other, aet="CT01").returncode == 0


def test_move_reports_failed_suboperations_with_their_uids(server, storescp, tmp_path):
    files = [make_instance(tmp_path, patient_id="P9", study_uid="1.2.3.6",
                           sop_uid=f"1.2.3.6.{i}") for i in range(3)]  # fmt: skip
    assert server.storescu(*files).returncode == 0
    # lose one file behind pacscore's back
    lost = next(p for p in (server.home / "storage").rglob("*.dcm")
                if dcmread(p, stop_before_pixels=True).SOPInstanceUID == "1.2.3.6.1")  # fmt: skip
    lost.unlink()
    server.cli("node", "add", "dest", "--aet", storescp.aet, "--host", "127.0.0.1",
               "--port", str(storescp.port), "--allow", "move")  # fmt: skip
    result = server.move_study("1.2.3.6", storescp.aet, aet=storescp.aet, extra=("-d",))
    output = result.stdout + result.stderr
    final = output[output.rindex("Received Final Move Response") :]
    assert re.search(r"Completed Suboperations\s*:\s*2", final), final
    assert re.search(r"Failed Suboperations\s*:\s*1", final), final
    assert re.search(r"\(0008,0058\) UI \[1\.2\.3\.6\.1\]", final), final  # failed UID list
    assert len(storescp.files()) == 2


def test_store_refused_by_policies(server, tmp_path):
    base = make_instance(tmp_path / "a", patient_id="P1", study_uid="1.2.3.7")
    other_patient = make_instance(tmp_path / "b", patient_id="P2", study_uid="1.2.3.7")
    assert server.storescu(base).returncode == 0
    result = server.storescu(other_patient, extra=("-d",))
    assert re.search(r"0xc001|CannotUnderstand", result.stderr), result.stderr
    assert "differs" in result.stderr  # the Error Comment says why

    server.cli("settings", "--set", "accept_empty_patient_id=false")
    time.sleep(2.5)
    anonymous = make_instance(tmp_path / "c", patient_id="")
    result = server.storescu(anonymous, extra=("-d",))
    assert "empty PatientID refused" in result.stderr, result.stderr
    stored = stored_dataset_bytes(server)
    assert set(stored) == {str(dcmread(base).SOPInstanceUID)}


def test_storage_full_answers_out_of_resources_and_alerts(server, tmp_path):
    path = make_instance(tmp_path)
    server.cli("storage", "set", "default", "--min-free-mb", str(100 * 1024 * 1024))
    time.sleep(2.5)  # storage folders are re-read every 2 s
    result = server.storescu(path, extra=("-v",))
    assert re.search(r"0xa700|OutOfResources", result.stderr), result.stderr
    assert "alert storage_full" in server.log()

    second = tmp_path / "second-storage"
    server.cli("storage", "add", "second", str(second), "--min-free-mb", "0")
    time.sleep(2.5)
    assert server.storescu(path).returncode == 0
    assert len(list(second.rglob("*.dcm"))) == 1


def test_study_counts_follow_multi_series_stores(server, tmp_path):
    by_series = defaultdict(list)
    for series in ("1.2.3.8.1", "1.2.3.8.2"):
        for _ in range(3):
            by_series[series].append(
                make_instance(
                    tmp_path,
                    study_uid="1.2.3.8",
                    series_uid=series,
                    modality="MR" if series.endswith("2") else "CT",
                )  # fmt: skip
            )
    assert server.storescu(*[p for files in by_series.values() for p in files]).returncode == 0
    server.cli("node", "add", "f", "--aet", "FINDSCU", "--host", "127.0.0.1", "--port", "1",
               "--allow", "find")  # fmt: skip
    result = server.findscu("QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.8",
                            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                            "ModalitiesInStudy", extra=("-v",))  # fmt: skip
    output = result.stdout + result.stderr
    assert re.search(r"\(0020,1206\) IS \[2 ?\]", output), output
    assert re.search(r"\(0020,1208\) IS \[6 ?\]", output), output
    assert re.search(r"\(0008,0061\) CS \[CT\\MR ?\]", output), output
