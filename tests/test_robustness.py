"""Hostile and malformed DICOM input never kills the listener nor loses data.

Every test talks to a real ``pacscore serve`` subprocess.  After each bad
input the server must still answer C-ECHO, store and find a valid instance,
and keep every instance stored before; the bad input itself must get a
failure status or an abort, and leave nothing indexed nor half-written.

Most peers here are raw sockets speaking hand-built PDUs (PS3.8 9.3), so the
exact bytes on the wire are under the test's control.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from pacscore.dicom.scu import client_ae
from pacscore.dicomfile.part10 import read_dicom_file
from tests.conftest import run_dcmtk
from tests.dicomgen import dataset_bytes, make_instance

CALLING_AET = "ROBUST"
PATIENT_ID = "ROBUST1"
VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# how long a single exchange with the server may take before we call it hung
TIMEOUT = 10.0
# pacscore.dicom.scp's settings
SERVER_ACSE_TIMEOUT = 30
MAX_ASSOCIATIONS = 64

pytestmark = pytest.mark.timeout(120)


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture
def pacs(pacs_home):
    """A running server where ROBUST is a declared node allowed to store and find."""
    pacs_home.cli(
        "node", "add", "robust", "--aet", CALLING_AET, "--host", "127.0.0.1",
        "--port", "104", "--allow", "store,find",
    )  # fmt: skip
    pacs_home.start()
    pacs_home.stored = []  # SOP Instance UIDs acknowledged so far: none may be lost
    check_alive(pacs_home)
    yield pacs_home
    pacs_home.stop()


# -- hand-built PDUs ----------------------------------------------------------------


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(
    called: str,
    calling: str = CALLING_AET,
    contexts: tuple = (
        (1, CTImageStorage, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        (3, VERIFICATION, (ImplicitVRLittleEndian,)),
    ),
    max_pdu: int = 16384,
) -> bytes:
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
    body += b"\x00" * 32 + item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, abstract, syntaxes in contexts:
        sub = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in syntaxes)
        body += item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    user = item(0x51, struct.pack(">L", max_pdu)) + item(0x52, b"1.2.3.4.5.6")
    return pdu(0x01, body + item(0x50, user))


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """One presentation data value: control bit 0 = command, bit 1 = last fragment."""
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(0x04, b"".join(pdvs))


A_RELEASE_RQ = pdu(0x05, b"\x00" * 4)
A_ABORT = pdu(0x07, b"\x00\x00\x00\x00")


def store_command(sop_uid: str, sop_class: str = CTImageStorage, message_id: int = 1) -> bytes:
    """The encoded C-STORE-RQ command set (implicit VR little endian, group length)."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = io.BytesIO(b"\x00")  # a data set follows
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return encode(msg.command_set, True, True)


class RawPeer:
    """A DICOM peer on a plain socket: every byte it sends is chosen by the test."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.contexts: dict[int, str] = {}  # accepted context id -> transfer syntax

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def read_pdu(self) -> tuple[int, bytes] | None:
        """(type, body) of the next PDU, None once the server closed the connection."""
        header = self._recv_exact(6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = self._recv_exact(length)
        assert body is not None, "the server closed in the middle of a PDU"
        return pdu_type, body

    def associate(self, called: str, **kwargs) -> None:
        self.send(associate_rq(called, **kwargs))
        reply = self.read_pdu()
        assert reply is not None and reply[0] == 0x02, f"association not accepted: {reply!r}"
        body = reply[1][68:]  # skip the fixed fields of the A-ASSOCIATE-AC
        while body:
            item_type, _, length = struct.unpack(">BBH", body[:4])
            value, body = body[4 : 4 + length], body[4 + length :]
            if item_type == 0x21 and value[2] == 0:  # an accepted presentation context
                ts_length = struct.unpack(">H", value[6:8])[0]
                self.contexts[value[0]] = value[8 : 8 + ts_length].decode().rstrip("\x00 ")

    def read_response(self) -> Dataset:
        """The next DIMSE command set the server sends (a C-STORE-RSP here)."""
        command = b""
        while True:
            reply = self.read_pdu()
            assert reply is not None, "the server closed instead of answering"
            assert reply[0] == 0x04, f"expected P-DATA-TF, got PDU type 0x{reply[0]:02X}"
            body = reply[1]
            while body:
                length, _, control = struct.unpack(">LBB", body[:6])
                command += body[6 : 4 + length]
                body = body[4 + length :]
                if control == 0x03:
                    return read_dataset(io.BytesIO(command), True, True)

    def release(self) -> None:
        self.send(A_RELEASE_RQ)
        reply = self.read_pdu()
        assert reply is not None and reply[0] == 0x06, f"no A-RELEASE-RP: {reply!r}"

    def close_and_drain(self) -> bytes:
        """Half-close, then read whatever the server says until it closes (bounded)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk
        raise AssertionError("the server kept the connection open after the peer closed")


def assert_abort_or_close(received: bytes) -> None:
    """What a server may answer garbage with: nothing (closed) or PDUs ending in an abort."""
    if received:
        assert received[0] in (0x03, 0x07), f"unexpected answer to garbage: {received[:16]!r}"


# -- test data ----------------------------------------------------------------------


def explicit_element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def header_elements(sop_uid: str, study_uid: str | None, series_uid: str | None) -> dict:
    """The index attributes of a minimal CT instance, as explicit VR LE elements by tag."""
    elements = {
        (0x0008, 0x0016): explicit_element(0x0008, 0x0016, b"UI", CTImageStorage.encode()),
        (0x0008, 0x0018): explicit_element(0x0008, 0x0018, b"UI", sop_uid.encode()),
        (0x0008, 0x0060): explicit_element(0x0008, 0x0060, b"CS", b"CT"),
        (0x0010, 0x0010): explicit_element(0x0010, 0x0010, b"PN", b"ROBUST^TEST"),
        (0x0010, 0x0020): explicit_element(0x0010, 0x0020, b"LO", PATIENT_ID.encode()),
    }
    if study_uid:
        elements[(0x0020, 0x000D)] = explicit_element(0x0020, 0x000D, b"UI", study_uid.encode())
    if series_uid:
        elements[(0x0020, 0x000E)] = explicit_element(0x0020, 0x000E, b"UI", series_uid.encode())
    return elements


def valid_dataset(sop_uid: str, pixel_bytes: int = 64) -> bytes:
    """A small valid CT data set, explicit VR little endian, with some pixel data."""
    elements = header_elements(sop_uid, generate_uid(), generate_uid())
    pixels = bytes(i % 251 for i in range(pixel_bytes))
    pixel_data = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, len(pixels)) + pixels
    return b"".join(elements[tag] for tag in sorted(elements)) + pixel_data


def dataset_with(sop_uid: str, extra: dict[tuple[int, int], bytes], uids: bool = True) -> bytes:
    """A minimal data set plus ``extra`` raw elements, all in tag order."""
    elements = header_elements(sop_uid, *(generate_uid(), generate_uid()) if uids else (None, None))
    elements.update(extra)
    return b"".join(elements[tag] for tag in sorted(elements))


def nested_sequences(depth: int, implicit: bool) -> bytes:
    """(0008,1115) sequences of undefined length nested ``depth`` levels deep."""
    if implicit:
        seq = struct.pack("<HHL", 0x0008, 0x1115, 0xFFFFFFFF)
    else:
        seq = struct.pack("<HH2sHL", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF)
    item_start = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return (seq + item_start) * depth + (item_end + seq_end) * depth


def implicit_element(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, elem, len(value)) + value


# -- what the server must still do after every hostile input ------------------------------


def scu_ae() -> AE:
    ae = client_ae(CALLING_AET, TIMEOUT)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae


def find_instances(pacs, sop_uid: str = "") -> set[str]:
    """SOP Instance UIDs indexed for the test patient (or the one asked for)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.PatientID = PATIENT_ID
    identifier.StudyInstanceUID = ""
    identifier.SeriesInstanceUID = ""
    identifier.SOPInstanceUID = sop_uid
    assoc = scu_ae().associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established, "C-FIND association refused"
    found = set()
    try:
        for rsp, matched in assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            assert rsp is not None and "Status" in rsp, "C-FIND got no answer"
            if rsp.Status == 0xFF00:
                found.add(str(matched.SOPInstanceUID))
            else:
                assert rsp.Status == 0x0000, f"C-FIND failed 0x{rsp.Status:04X}"
    finally:
        assoc.release()
    return found


def store_valid(pacs, sop_uid: str | None = None, record: bool = True) -> str:
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = PATIENT_ID
    ds.PatientName = "ROBUST^CHECK"
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = scu_ae().associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established, "C-STORE association refused"
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert rsp is not None and rsp.Status == 0x0000, f"valid C-STORE failed: {rsp}"
    if record:
        pacs.stored.append(sop_uid)
    return sop_uid


def alive_pid(pacs) -> int:
    assert pacs.process.poll() is None, f"the server died:\n{pacs.log()[-3000:]}"
    return pacs.process.pid


def check_alive(pacs) -> None:
    """The process lives, answers C-ECHO, stores and finds, and lost nothing stored before."""
    alive_pid(pacs)
    echo = run_dcmtk(
        "echoscu", "-to", "10", "-aet", CALLING_AET, "-aec", pacs.aet,
        "127.0.0.1", str(pacs.dicom_port), timeout=30,
    )  # fmt: skip
    assert echo.returncode == 0, f"C-ECHO failed: {echo.stdout}{echo.stderr}"
    store_valid(pacs)
    assert find_instances(pacs) == set(pacs.stored), "the index lost or gained instances"
    alive_pid(pacs)


def incoming_files(pacs) -> list[Path]:
    incoming = pacs.home / "storage" / ".incoming"
    return sorted(incoming.iterdir()) if incoming.is_dir() else []


def stored_path(pacs, sop_uid: str) -> Path:
    digest = hashlib.sha256(sop_uid.encode()).hexdigest()
    return pacs.home / "storage" / digest[:2] / digest[2:4] / f"{digest}.dcm"


def thread_count(pid: int) -> int:
    """Threads of the server and of its DICOM listener processes (connections go to any)."""
    total = 0
    for process in [pid, *child_pids(pid)]:
        for line in read_proc(f"/proc/{process}/status").splitlines():
            if line.startswith("Threads:"):
                total += int(line.split()[1])
    return total


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in read_proc(task / "children").split()]
    return children


def read_proc(path) -> str:
    """A /proc file, or "" when its thread or process ended since it was listed."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def wait_until(predicate, timeout: float = TIMEOUT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def store_raw(pacs, data: bytes, sop_uid: str, ts: str = ExplicitVRLittleEndian) -> Dataset:
    """C-STORE ``data`` as is over a raw association; return the C-STORE-RSP command."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, contexts=((1, CTImageStorage, (ts,)),))
        assert peer.contexts == {1: ts}
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
        peer.send(p_data(pdv(1, 0x02, data)))
        rsp = peer.read_response()
        peer.release()
    return rsp


def assert_refused(rsp: Dataset) -> None:
    assert rsp.Status & 0xF000 == 0xC000, f"expected a 0xCxxx failure, got 0x{rsp.Status:04X}"
    assert rsp.get("ErrorComment"), "a failure must carry an Error Comment"


# -- garbage on the wire -----------------------------------------------------------------


def test_garbage_bytes_then_close(pacs):
    rng = random.Random(1523)
    inputs = [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
        b"\x00" * 64,
        b"\xff" * 64,
        *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))) for _ in range(4)),
        # valid PDU types with random bodies
        *(bytes([t, 0]) + struct.pack(">L", 200) + rng.randbytes(200) for t in range(1, 8)),
    ]
    for garbage in inputs:
        with RawPeer(pacs.dicom_port) as peer:
            peer.send(garbage)
            assert_abort_or_close(peer.close_and_drain())
    check_alive(pacs)


def test_truncated_associate_rq_and_huge_pdu_length(pacs):
    rq = associate_rq(pacs.aet)
    for cut in (1, 5, 6, 10, 74, len(rq) // 2, len(rq) - 1):
        with RawPeer(pacs.dicom_port) as peer:
            peer.send(rq[:cut])
            assert_abort_or_close(peer.close_and_drain())
    # a consistent PDU length around an item whose own length lies
    broken = bytearray(rq)
    broken[76:78] = b"\xff\xff"  # the application context item's length
    with RawPeer(pacs.dicom_port) as peer:
        peer.send(bytes(broken))
        assert_abort_or_close(peer.close_and_drain())
    for pdu_type in (0x01, 0x04, 0x07):
        # a huge declared PDU length, a little data, then the peer goes away
        with RawPeer(pacs.dicom_port) as peer:
            peer.send(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFF0) + b"\x00" * 1000)
            assert_abort_or_close(peer.close_and_drain())
    # the same after a valid association: a P-DATA-TF declaring 4 GiB
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet)
        peer.send(struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 1000)
        assert_abort_or_close(peer.close_and_drain())
    check_alive(pacs)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_pdu_declaring_a_gigabyte_is_cut_off_not_buffered(pacs):
    pid = alive_pid(pacs)
    before = peak_rss_mib(pid)
    sent = 0
    chunk = b"\x00" * (1024 * 1024)
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet)
        with contextlib.suppress(OSError):  # the server hangs up: that is the point
            peer.send(struct.pack(">BBL", 0x04, 0, 1024**3))
            while sent < 200 * len(chunk):
                peer.sock.sendall(chunk)
                sent += len(chunk)
    assert sent < 200 * len(chunk), "the server kept reading a 1 GiB PDU"
    assert peak_rss_mib(pid) - before < 32
    check_alive(pacs)


def test_many_broken_connections_release_their_threads(pacs):
    pid = alive_pid(pacs)
    baseline = thread_count(pid)
    rq = associate_rq(pacs.aet)
    variants = [
        b"GET / HTTP/1.0\r\n\r\n",
        rq[: len(rq) // 2],
        struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 100,
        bytes(range(256)),
        b"",
    ]
    # 100 connections, 20 open at a time, closed without waiting: the server takes
    # them at ~7 a second (each association deep-copies 127 contexts x 43 syntaxes)
    for batch in range(5):
        peers = [RawPeer(pacs.dicom_port) for _ in range(20)]
        for number, peer in enumerate(peers):
            with contextlib.suppress(OSError):  # the server may already have aborted
                peer.send(variants[(batch + number) % len(variants)])
        for peer in peers:
            peer.sock.close()
        alive_pid(pacs)
    # pynetdicom keeps the thread of a connection that never associated until its
    # ACSE timeout (30 s in pacscore.dicom.scp) expires, even once the peer is gone
    assert wait_until(
        lambda: thread_count(pid) <= baseline + 2, timeout=SERVER_ACSE_TIMEOUT + 10
    ), f"threads did not come back: {thread_count(pid)} now, {baseline} before"
    check_alive(pacs)


def test_connections_closed_before_associating_free_their_slot(pacs):
    for _ in range(MAX_ASSOCIATIONS + 6):  # a port scanner or a TCP health check
        with RawPeer(pacs.dicom_port) as peer:
            assert_abort_or_close(peer.close_and_drain())
    alive_pid(pacs)
    check_alive(pacs)


# -- interrupted stores ---------------------------------------------------------------------


def test_abort_in_the_middle_of_a_store(pacs):
    """A-ABORT, a TCP close and a pynetdicom abort, each half-way through a data set."""
    partial = []
    # 1. raw peer: command, two data fragments out of many, then A-ABORT
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=200_000)
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet)
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
        peer.send(p_data(pdv(1, 0x00, data[:8000])))
        peer.send(p_data(pdv(1, 0x00, data[8000:16000])))
        peer.send(A_ABORT)
        assert peer.close_and_drain() == b""
    partial.append(sop_uid)
    # 2. raw peer: the same, but the connection just drops (RST) mid-PDU
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=200_000)
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet)
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
        peer.send(p_data(pdv(1, 0x02, data))[: len(data) // 2])
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    partial.append(sop_uid)
    # 3. pynetdicom peer: its own P-DATA fragments queued, then assoc.abort()
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=200_000)
    assoc = scu_ae().associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established
    context_id = next(
        c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage
    )
    for control, fragment in (
        (b"\x03", store_command(sop_uid)),
        (b"\x00", data[:16000]),
        (b"\x00", data[16000:32000]),
    ):
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, control + fragment))
        assoc.dul.send_pdu(primitive)
    assoc.abort()
    assert assoc.is_aborted
    partial.append(sop_uid)

    check_alive(pacs)
    for sop_uid in partial:
        assert not find_instances(pacs, sop_uid), "a partial instance was indexed"
        assert not stored_path(pacs, sop_uid).exists()
    assert wait_until(lambda: not incoming_files(pacs)), incoming_files(pacs)
    # and a restart neither finds leftovers nor loses what was acknowledged
    pacs.stop()
    pacs.start()
    assert not incoming_files(pacs)
    check_alive(pacs)


# -- malformed data sets ----------------------------------------------------------------------


def test_garbage_data_set_is_refused(pacs, tmp_path, monkeypatch):
    # pynetdicom sending a file as is: a valid file meta, then a garbage body
    rng = random.Random(7)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sop_uid = generate_uid()
    template = make_instance(tmp_path / "template", patient_id=PATIENT_ID, sop_uid=sop_uid)
    meta_length = template.stat().st_size - len(dataset_bytes(template))
    meta = template.read_bytes()[:meta_length]
    bodies = {
        "random": rng.randbytes(5000),
        "zeros": b"\x00" * 4096,
        # the first element declares more bytes than the whole data set holds
        "overlong": explicit_element(0x0008, 0x0005, b"CS", b"ISO_IR 100")[:6]
        + b"\xff\x7f"
        + b"A" * 100,
        "half element": b"\x08\x00\x16\x00UI",
    }
    assoc = scu_ae().associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established
    try:
        for name, body in bodies.items():
            path = tmp_path / f"{name}.dcm"
            path.write_bytes(meta + body)
            rsp = assoc.send_c_store(path)
            assert rsp is not None and "Status" in rsp, f"{name}: no C-STORE-RSP"
            assert_refused(rsp)
    finally:
        assoc.release()
    assert not find_instances(pacs, sop_uid)
    # the same over a raw association, both transfer syntaxes
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        assert_refused(store_raw(pacs, rng.randbytes(3000), generate_uid(), ts))
    check_alive(pacs)


def test_missing_instance_or_study_uid_is_refused(pacs):
    # neither Study nor Series Instance UID
    sop_uid = generate_uid()
    rsp = store_raw(pacs, dataset_with(sop_uid, {}, uids=False), sop_uid)
    assert rsp.Status == 0xC000 and rsp.get("ErrorComment")
    # no SOP Instance UID at all
    no_sop = header_elements(generate_uid(), generate_uid(), generate_uid())
    del no_sop[(0x0008, 0x0018)]
    rsp = store_raw(pacs, b"".join(no_sop[t] for t in sorted(no_sop)), generate_uid())
    assert rsp.Status == 0xC000 and rsp.get("ErrorComment")
    # a Study Instance UID but no Series Instance UID
    only_study = header_elements(sop_uid, generate_uid(), None)
    rsp = store_raw(pacs, b"".join(only_study[t] for t in sorted(only_study)), sop_uid)
    assert rsp.Status == 0xC000 and rsp.get("ErrorComment")
    assert not find_instances(pacs, sop_uid)
    check_alive(pacs)


def test_huge_element_length_in_header_groups(pacs):
    """An element declaring 0xFFFFFFF0 bytes: refused, not stored as a truncated data set."""
    refused = []
    # (0020,4000) Image Comments, after every UID the index needs, 4 GiB declared
    huge = {
        ExplicitVRLittleEndian: struct.pack("<HH2sHL", 0x0020, 0x4000, b"UT", 0, 0xFFFFFFF0),
        ImplicitVRLittleEndian: struct.pack("<HHL", 0x0020, 0x4000, 0xFFFFFFF0),
    }
    for ts, element in huge.items():
        sop_uid = generate_uid()
        if ts == ExplicitVRLittleEndian:
            data = dataset_with(sop_uid, {(0x0020, 0x4000): element + b"x" * 64})
        else:
            data = b"".join(
                [
                    implicit_element(0x0008, 0x0016, CTImageStorage.encode()),
                    implicit_element(0x0008, 0x0018, sop_uid.encode()),
                    implicit_element(0x0010, 0x0020, PATIENT_ID.encode()),
                    implicit_element(0x0020, 0x000D, generate_uid().encode()),
                    implicit_element(0x0020, 0x000E, generate_uid().encode()),
                    element + b"x" * 64,
                ]
            )
        rsp = store_raw(pacs, data, sop_uid, ts)
        assert rsp.Status == 0xC000 and rsp.get("ErrorComment"), rsp
        refused.append(sop_uid)
    # an indexed attribute itself declaring 4 GiB: (0010,0010) Patient Name, implicit VR
    sop_uid = generate_uid()
    data = b"".join(
        [
            implicit_element(0x0008, 0x0016, CTImageStorage.encode()),
            implicit_element(0x0008, 0x0018, sop_uid.encode()),
            struct.pack("<HHL", 0x0010, 0x0010, 0xFFFFFFF0) + b"DOE^JOHN",
            implicit_element(0x0020, 0x000D, generate_uid().encode()),
            implicit_element(0x0020, 0x000E, generate_uid().encode()),
        ]
    )
    rsp = store_raw(pacs, data, sop_uid, ImplicitVRLittleEndian)
    assert rsp.Status == 0xC000 and rsp.get("ErrorComment"), rsp
    refused.append(sop_uid)
    for sop_uid in refused:
        assert not find_instances(pacs, sop_uid)
        assert not stored_path(pacs, sop_uid).exists()
    check_alive(pacs)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_deeply_nested_sequences(pacs, implicit):
    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    for depth in (1200, 20000):
        sop_uid = generate_uid()
        nested = nested_sequences(depth, implicit)
        if implicit:
            data = b"".join(
                [
                    implicit_element(0x0008, 0x0016, CTImageStorage.encode()),
                    implicit_element(0x0008, 0x0018, sop_uid.encode()),
                    nested,
                    implicit_element(0x0010, 0x0020, PATIENT_ID.encode()),
                    implicit_element(0x0020, 0x000D, generate_uid().encode()),
                    implicit_element(0x0020, 0x000E, generate_uid().encode()),
                ]
            )
        else:
            data = dataset_with(sop_uid, {(0x0008, 0x1115): nested})
        started = time.monotonic()
        rsp = store_raw(pacs, data, sop_uid, ts)
        assert time.monotonic() - started < TIMEOUT
        assert rsp.Status in (0x0000,) or rsp.Status & 0xF000 == 0xC000, hex(rsp.Status)
        if rsp.Status == 0x0000:
            pacs.stored.append(sop_uid)
        else:
            assert rsp.get("ErrorComment")
            assert not find_instances(pacs, sop_uid)
        alive_pid(pacs)
    check_alive(pacs)


# -- PDU framing that is unusual but valid ------------------------------------------------------


def _byte_by_byte(command: bytes, data: bytes) -> list[bytes]:
    whole = p_data(pdv(1, 0x03, command)) + p_data(pdv(1, 0x02, data))
    return [whole[i : i + 1] for i in range(len(whole))]


def _cut_at_boundaries(command: bytes, data: bytes) -> list[bytes]:
    """Each write ends inside a PDU header, a PDV header, or between two PDUs."""
    first, second = p_data(pdv(1, 0x03, command)), p_data(pdv(1, 0x02, data))
    return [first[:1], first[1:6], first[6:10], first[10:12], first[12:], second[:6], second[6:]]


def _one_pdu_many_pdvs(command: bytes, data: bytes) -> list[bytes]:
    """Command and data set, each in several fragments, all in one P-DATA-TF."""
    pdvs = [pdv(1, 0x01, command[:10]), pdv(1, 0x03, command[10:])]
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    pdvs += [pdv(1, 0x00, piece) for piece in pieces[:-1]] + [pdv(1, 0x02, pieces[-1])]
    return [p_data(*pdvs)]


def _one_byte_per_pdu(command: bytes, data: bytes) -> list[bytes]:
    pdus = [p_data(pdv(1, 0x01, command[i : i + 1])) for i in range(len(command) - 1)]
    pdus.append(p_data(pdv(1, 0x03, command[-1:])))
    pdus += [p_data(pdv(1, 0x00, data[i : i + 1])) for i in range(len(data) - 1)]
    pdus.append(p_data(pdv(1, 0x02, data[-1:])))
    return [b"".join(pdus)]


FRAMINGS = {
    "byte by byte": _byte_by_byte,
    "cut at boundaries": _cut_at_boundaries,
    "one PDU, many PDVs": _one_pdu_many_pdvs,
    "one byte per PDU": _one_byte_per_pdu,
}


def test_unusual_but_valid_framing_stores_the_exact_bytes(pacs):
    """Split PDUs, several PDVs per PDU, command and data in one PDU: stored byte for byte."""
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, contexts=((1, CTImageStorage, (ExplicitVRLittleEndian,)),))
        for message_id, (name, framing) in enumerate(FRAMINGS.items(), start=1):
            sop_uid = generate_uid()
            data = valid_dataset(sop_uid, pixel_bytes=300 + 2 * message_id)
            for write in framing(store_command(sop_uid, message_id=message_id), data):
                peer.send(write)
            rsp = peer.read_response()
            assert rsp.Status == 0x0000, f"{name}: 0x{rsp.Status:04X} {rsp.get('ErrorComment')}"
            assert rsp.MessageIDBeingRespondedTo == message_id
            pacs.stored.append(sop_uid)
            stored, ts = read_dicom_file(stored_path(pacs, sop_uid))
            assert ts == ExplicitVRLittleEndian
            assert stored == data, f"{name}: the stored data set differs from the sent bytes"
        peer.release()
    check_alive(pacs)


def test_kill_during_stores_leaves_no_incoming_and_loses_nothing(pacs):
    """kill -9 while stores are in flight: acknowledged instances survive, no .part remains."""
    stop = threading.Event()
    attempted: list[str] = []
    acknowledged: list[str] = []

    def keep_storing():
        while not stop.is_set():
            sop_uid = generate_uid()
            attempted.append(sop_uid)
            try:
                store_valid(pacs, sop_uid, record=False)
            except Exception:  # noqa: BLE001 - the server goes away under us
                return
            acknowledged.append(sop_uid)

    worker = threading.Thread(target=keep_storing, daemon=True)
    worker.start()
    assert wait_until(lambda: len(acknowledged) >= 5)
    pacs.kill9()
    stop.set()
    worker.join(timeout=TIMEOUT)
    assert not worker.is_alive()
    pacs.start()
    assert not incoming_files(pacs)
    found = find_instances(pacs)
    before = set(pacs.stored) | set(acknowledged)
    assert before <= found, "an acknowledged instance was lost"
    # at most the one store in flight at the kill may have been committed unacknowledged
    assert found - before <= set(attempted[-1:])
    pacs.stored.extend(found - set(pacs.stored))
    check_alive(pacs)
