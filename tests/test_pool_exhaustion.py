"""Hostile associations never take the database pool away from the server (issue 20).

A fuzzer's aborted, reset, timed-out and refused associations once left their
threads' database connections checked out for ever: after a few minutes
every C-STORE, C-FIND and HL7 order failed with ``MaxConnectionsExceeded``
while C-ECHO still answered.  Here a real ``pacscore serve`` (one DICOM
process, so the HL7 listener shares its pool) gets a pool of a few
connections and many more associations ending in every abnormal way, from
four clients at once; then a C-STORE, a C-FIND and an HL7 order must still
succeed, the health check must say the database is fine, and no thread may
have ended holding a connection.

The server's DICOM timeouts are cut to 2 s for the test (a ``sitecustomize``
on its PYTHONPATH), so that network, ACSE and DIMSE timeouts happen in
seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from tests.conftest import PacsProcess, wait_for_port
from tests.dicomgen import make_instance
from tests.test_robustness import (
    A_ABORT,
    A_RELEASE_RQ,
    RawPeer,
    associate_rq,
    p_data,
    pdv,
    store_command,
    valid_dataset,
)

POOL_SIZE = 4  # connections per process: each scenario below runs more often than that
ROUNDS = 3  # every scenario runs this many times (interleaved, from 4 clients)
CLIENTS = 4
DICOM_TIMEOUT = 2  # the server's ACSE, DIMSE and network timeouts, in seconds
TIMEOUT = 15.0  # how long a client waits for the server
DECLARED = "ROBUST"  # a declared node: store, find and get
STRANGER = "STRANGER"  # not declared: its queries are refused
PATIENT_ID = "POOL1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_CONTEXTS = ((1, STUDY_ROOT_FIND, (ImplicitVRLittleEndian,)),)
STORE_CONTEXTS = ((1, CTImageStorage, (ExplicitVRLittleEndian,)),)

pytestmark = pytest.mark.timeout(300)

SHORT_TIMEOUTS = f'''
"""Test only (tests/test_pool_exhaustion.py): short DICOM timeouts for this server."""
import pacscore.dicom.scp as _server

_build_ae = _server.build_ae


def build_ae(pacs):
    ae = _build_ae(pacs)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = {DICOM_TIMEOUT}
    return ae


_server.build_ae = build_ae
'''


def with_pool_size(url: str, size: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}max_connections={size}"


@pytest.fixture
def pacs(tmp_path, db_url):
    """``pacscore serve`` with a pool of POOL_SIZE connections and 2 s DICOM timeouts."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHORT_TIMEOUTS)
    server = PacsProcess(tmp_path / "home", with_pool_size(db_url, POOL_SIZE)).init()
    server.cli(
        "node", "add", "robust", "--aet", DECLARED, "--host", "127.0.0.1",
        "--port", "104", "--allow", "store,find,get",
    )  # fmt: skip
    pythonpath = ":".join(p for p in (str(shim), server.env.get("PYTHONPATH", "")) if p)
    server.start(extra_env={"PYTHONPATH": pythonpath}, args=("--dicom-processes", "1"))
    wait_for_port(server.hl7_port, process=server.process)
    yield server
    server.stop()


# -- DIMSE messages on a raw socket ------------------------------------------------------


def find_command(message_id: int = 1) -> bytes:
    req = C_FIND()
    req.MessageID = message_id
    req.AffectedSOPClassUID = STUDY_ROOT_FIND
    req.Priority = 2
    req.Identifier = io.BytesIO(b"\x00")  # an identifier follows
    msg = C_FIND_RQ()
    msg.primitive_to_message(req)
    return encode(msg.command_set, True, True)


def identifier(**values) -> bytes:
    ds = Dataset()
    with warnings.catch_warnings():  # pydicom warns of the hostile values: they are meant
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return encode(ds, True, True)


def send_find(peer: RawPeer, data: bytes) -> None:
    peer.send(p_data(pdv(1, 0x03, find_command())))
    peer.send(p_data(pdv(1, 0x02, data)))


def read_command(peer: RawPeer) -> Dataset | None:
    """The next command set the server sends (data set PDVs skipped), None if it hung up."""
    command = b""
    while True:
        try:
            reply = peer.read_pdu()
        except (OSError, AssertionError):
            return None
        if reply is None or reply[0] != 0x04:
            return None  # closed, aborted
        body = reply[1]
        while body:
            length, _, control = struct.unpack(">LBB", body[:6])
            if control & 0x01:
                command += body[6 : 4 + length]
                if control & 0x02:
                    return read_dataset(io.BytesIO(command), True, True)
            body = body[4 + length :]


def final_find_status(peer: RawPeer) -> int | None:
    """Read C-FIND responses up to the final one; its status, None if the server hung up."""
    while True:
        command = read_command(peer)
        if command is None:
            return None
        if command.Status not in (0xFF00, 0xFF01):
            return command.Status


def wait_for_hang_up(peer: RawPeer, timeout: float = TIMEOUT) -> bytes:
    """Whatever the server sends until it closes the connection (its timeouts act)."""
    received = bytearray()
    peer.sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ConnectionResetError):
        while time.monotonic() < deadline:
            chunk = peer.sock.recv(65536)
            if not chunk:
                return bytes(received)
            received += chunk
    raise AssertionError("the server kept an idle connection past its timeouts")


def reset(peer: RawPeer) -> None:
    """Close with a TCP RST instead of a FIN."""
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sock.close()


# -- how an association can end ----------------------------------------------------------


def abort_before_associating(pacs, rng) -> None:
    """A-ABORT in Sta2 (transport open, no A-ASSOCIATE-RQ yet)."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.send(A_ABORT)
        peer.close_and_drain()


def idle_until_the_acse_timeout(pacs, rng) -> None:
    """A TCP connection that never sends an A-ASSOCIATE-RQ."""
    with RawPeer(pacs.dicom_port) as peer:
        wait_for_hang_up(peer)


def slow_drip_then_silence(pacs, rng) -> None:
    """An A-ASSOCIATE-RQ a few bytes at a time, then nothing: the network timeout.

    (Silence in the middle of a PDU: tests/test_stalled_peers.py.)
    """
    with RawPeer(pacs.dicom_port) as peer:
        request = associate_rq(pacs.aet, calling=STRANGER, contexts=FIND_CONTEXTS)
        step = len(request) // 4 + 1
        for start in range(0, len(request), step):
            peer.send(request[start : start + step])
            time.sleep(0.1)
        reply = peer.read_pdu()
        assert reply is not None and reply[0] == 0x02, reply
        send_find(peer, identifier(QueryRetrieveLevel="STUDY", PatientID="*"))
        assert final_find_status(peer) == 0x0124
        wait_for_hang_up(peer)


def refused_find_then_abort(pacs, rng) -> None:
    """A C-FIND from an undeclared AE (the rights are read), then A-ABORT in Sta6."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=STRANGER, contexts=FIND_CONTEXTS)
        send_find(peer, identifier(QueryRetrieveLevel="STUDY", PatientID="*"))
        assert final_find_status(peer) == 0x0124  # Refused: Not authorized
        peer.send(A_ABORT)


def refused_find_then_idle(pacs, rng) -> None:
    """The same, then silence until the server's network timeout aborts the association."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=STRANGER, contexts=FIND_CONTEXTS)
        send_find(peer, identifier(QueryRetrieveLevel="STUDY", PatientID="*"))
        assert final_find_status(peer) == 0x0124
        received = wait_for_hang_up(peer)
        assert not received or received[0] == 0x07, received[:16]  # an A-ABORT, or just closed


def refused_find_then_release_and_abort(pacs, rng) -> None:
    """A-RELEASE-RQ immediately followed by A-ABORT (Sta7/Sta8 on the server's side)."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=STRANGER, contexts=FIND_CONTEXTS)
        send_find(peer, identifier(QueryRetrieveLevel="PATIENT", PatientName="A*"))
        assert final_find_status(peer) == 0x0124
        peer.send(A_RELEASE_RQ + A_ABORT)
        peer.close_and_drain()


def store_then_abort(pacs, rng) -> None:
    """A complete C-STORE from an undeclared AE (stored in the DUL thread), then A-ABORT."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=STRANGER, contexts=STORE_CONTEXTS)
        sop_uid = f"1.2.826.0.1.3680043.10.1523.20.{rng.randrange(10**12)}"
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
        peer.send(p_data(pdv(1, 0x02, valid_dataset(sop_uid))))
        response = read_command(peer)
        assert response is not None and response.Status == 0x0000
        peer.send(A_ABORT)


def abort_in_the_middle_of_a_data_set(pacs, rng) -> None:
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=DECLARED, contexts=STORE_CONTEXTS)
        sop_uid = f"1.2.826.0.1.3680043.10.1523.21.{rng.randrange(10**12)}"
        data = valid_dataset(sop_uid, pixel_bytes=50_000)
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
        peer.send(p_data(pdv(1, 0x00, data[:8000])))
        peer.send(A_ABORT)
        peer.close_and_drain()


def reset_in_the_middle_of_a_pdu(pacs, rng) -> None:
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=STRANGER, contexts=FIND_CONTEXTS)
        send_find(peer, identifier(QueryRetrieveLevel="STUDY", PatientID="*"))
        final_find_status(peer)
        whole = p_data(pdv(1, 0x03, find_command(2)))
        peer.send(whole[: len(whole) // 2])
        reset(peer)


# hostile identifiers from a declared node; the last two make the handler raise (a
# GLOB pattern too complex for SQLite, a NUL that PostgreSQL refuses in a string)
HOSTILE_IDENTIFIERS = [
    identifier(QueryRetrieveLevel="NOPE", PatientID="*"),
    identifier(QueryRetrieveLevel="PATIENT"),  # Study Root has no PATIENT level
    b"\x08\x00\x52\x00\xff\xff\xff\x7f" + b"STUDY",  # an element longer than the data set
    bytes(range(256)),
    identifier(QueryRetrieveLevel="STUDY", StudyDate="20240101-20231231-", PatientID="?" * 64),
    identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="\\".join(["1.2"] * 5000)),
    identifier(QueryRetrieveLevel="STUDY", PatientID="*" + "A" * 60_000 + "\x00B*"),
    identifier(QueryRetrieveLevel="STUDY", PatientName="*" + "A" * 60_000 + "\x00*"),
]


def hostile_find(pacs, rng) -> None:
    """A declared node's hostile C-FIND identifier, then release, abort or reset."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=DECLARED, contexts=FIND_CONTEXTS)
        send_find(peer, rng.choice(HOSTILE_IDENTIFIERS))
        final_find_status(peer)  # an answer, or an abort: the server decides
        ending = rng.choice(("release", "abort", "reset"))
        with contextlib.suppress(OSError, AssertionError):
            if ending == "release":
                peer.release()
            elif ending == "abort":
                peer.send(A_ABORT)
            else:
                reset(peer)


def handler_raises(pacs, rng) -> None:
    """A C-FIND whose handler raises inside its database query, then A-ABORT."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, calling=DECLARED, contexts=FIND_CONTEXTS)
        send_find(peer, HOSTILE_IDENTIFIERS[-1 - rng.randrange(2)])
        status = final_find_status(peer)
        assert status is None or status & 0xF000 in (0xA000, 0xC000), hex(status)
        peer.send(A_ABORT)


def get_unanswered(pacs, rng) -> None:
    """C-GET whose C-STORE sub-operation the peer never answers: the DIMSE timeout."""
    answered = threading.Event()

    def never_in_time(event):
        answered.wait(DICOM_TIMEOUT * 3)  # the server gives up first and aborts
        return 0x0000

    ae = AE(ae_title=DECLARED)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    roles = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate(
        "127.0.0.1",
        pacs.dicom_port,
        ae_title=pacs.aet,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, never_in_time)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = pacs.study_uid
    try:
        for _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            pass
    finally:
        answered.set()
        assoc.abort()
    assert assoc.is_aborted


SCENARIOS = [
    abort_before_associating,
    idle_until_the_acse_timeout,
    slow_drip_then_silence,
    refused_find_then_abort,
    refused_find_then_idle,
    refused_find_then_release_and_abort,
    store_then_abort,
    abort_in_the_middle_of_a_data_set,
    reset_in_the_middle_of_a_pdu,
    hostile_find,
    hostile_find,
    handler_raises,
    get_unanswered,
]


# -- what must still work afterwards -----------------------------------------------------


ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|POOL{n}|P|2.5\r"
    "PID|1||POOL{n}||Pool^Patient\r"
    "ORC|NW|PPLC{n}|PFIL{n}||SC||^^^20240102090000\r"
    "OBR|1|PPLC{n}|PFIL{n}|CT^CT^L||||||||||||1^Ref^Doc||PACC{n}|PRP{n}|PSPS{n}||||CT"
)


def hl7_order(pacs, number: int) -> str:
    """Send an ORM order over MLLP; return the ACK's MSA segment."""
    with socket.create_connection(("127.0.0.1", pacs.hl7_port), timeout=TIMEOUT * 2) as sock:
        sock.sendall(b"\x0b" + ORDER.format(n=number).encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    segments = data.strip(b"\x0b\x1c\r").decode("latin-1").split("\r")
    return next((s for s in segments if s.startswith("MSA")), repr(data))


def health(pacs) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{pacs.http_port}/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def store_and_find(pacs, folder: Path, number: int) -> None:
    """storescu then findscu (DCMTK), as a modality and a viewer would."""
    patient_id = f"{PATIENT_ID}-{number}"
    path = make_instance(folder, patient_id=patient_id)
    stored = pacs.storescu(path, aet=DECLARED)
    assert stored.returncode == 0, f"storescu failed: {stored.stdout}{stored.stderr}"
    out = folder / "found"
    out.mkdir()
    found = pacs.findscu(
        "QueryRetrieveLevel=STUDY", f"PatientID={patient_id}", "StudyInstanceUID",
        aet=DECLARED, extra=("-X", "-od", str(out)),
    )  # fmt: skip
    assert found.returncode == 0, f"findscu failed: {found.stdout}{found.stderr}"
    assert len(list(out.glob("*.dcm"))) == 1, f"C-FIND found nothing: {found.stderr}"


def test_hostile_associations_leave_the_pool_to_the_server(pacs, tmp_path):
    # a study for the C-GET scenario to retrieve
    study = make_instance(tmp_path / "study", patient_id=PATIENT_ID)
    assert pacs.storescu(study, aet=DECLARED).returncode == 0
    pacs.study_uid = str(dcmread(study).StudyInstanceUID)

    rng = random.Random(20)
    cases = SCENARIOS * ROUNDS
    rng.shuffle(cases)
    with ThreadPoolExecutor(CLIENTS) as clients:
        runs = [clients.submit(case, pacs, random.Random(rng.random())) for case in cases]
        failures = []
        for case, run in zip(cases, runs, strict=True):
            try:
                run.result(timeout=120)
            except Exception as exc:  # noqa: BLE001 - collected, reported together
                failures.append(f"{case.__name__}: {type(exc).__name__}: {exc}")
    assert pacs.process.poll() is None, f"the server died:\n{pacs.log()[-3000:]}"

    # each scenario ran more often than the pool has connections: what it kept is lost
    store_and_find(pacs, tmp_path / "after", 1)
    assert hl7_order(pacs, 1) == "MSA|AA|POOL1"
    status, answer = health(pacs)
    assert status == 200 and answer["status"] == "ok", answer
    assert answer["checks"]["database"]["connections"]["max"] == POOL_SIZE
    assert not failures, "\n".join(failures)

    log = pacs.log()
    for exhausted in ("MaxConnectionsExceeded", "PoolExhausted", "no free database connection"):
        assert exhausted not in log, log[-3000:]
    # every DICOM path gives its connection back itself, not when its thread ends
    assert "ended holding a database connection" not in log, log[-3000:]
    assert "connection(s) of ended threads" not in log, log[-3000:]
    assert "Exception in handler bound to 'evt.EVT_C_FIND'" in log  # it did raise
