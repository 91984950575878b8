"""A peer that stops in the middle of a PDU loses its association (issue 20).

pynetdicom read a PDU with blocking ``recv()`` calls and no timeout: a peer
that sent part of a PDU (header or body, before or after the association was
accepted) and then went silent held its association slot for ever, whatever
the ACSE, DIMSE and network timeouts said.  A handful of such peers (64 in
production, the association limit) and even C-ECHO was refused.

Here a real ``pacscore serve`` gets 2 s DICOM timeouts and an association
limit of as many peers as stall (a ``sitecustomize`` on its PYTHONPATH, as in
test_pool_exhaustion): each stalled connection must be aborted within the
network timeout of its last byte, logged with the peer's address, and C-ECHO
and storescu must work again.  A sender that is slow but keeps sending (a
1 MB data set over several network timeouts, one PDU of it alone taking
longer than one) must not be cut.  Our own associations (pacscore as a
client) get the same bound: an SCP stalling in its A-ASSOCIATE-AC.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacscore.dicom import scu
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.storage import instance_relpath
from tests.conftest import run_dcmtk
from tests.dicomgen import make_instance
from tests.test_robustness import RawPeer, associate_rq, p_data, pdv, store_command, valid_dataset

DICOM_TIMEOUT = 2  # the server's ACSE, DIMSE and network timeouts, in seconds
MARGIN = 3  # how late after its timeout the server may close, on a busy machine
STORE_CONTEXT = ((1, CTImageStorage, (ExplicitVRLittleEndian,)),)
PDU_BODY = 128 * 1024  # the server's maximum PDU length
A_ABORT = 0x07

pytestmark = pytest.mark.timeout(120)


# -- the ways to stall: each returns a peer that sent part of a PDU, then nothing ----------


def half_a_request_header(pacs) -> RawPeer:
    peer = RawPeer(pacs.dicom_port)
    peer.send(associate_rq(pacs.aet, contexts=STORE_CONTEXT)[:3])
    return peer


def half_a_request_body(pacs) -> RawPeer:
    peer = RawPeer(pacs.dicom_port)
    request = associate_rq(pacs.aet, contexts=STORE_CONTEXT)
    peer.send(request[: 6 + (len(request) - 6) // 2])
    return peer


def half_a_pdu_header_once_associated(pacs) -> RawPeer:
    peer = RawPeer(pacs.dicom_port)
    peer.associate(pacs.aet, contexts=STORE_CONTEXT)
    peer.send(p_data(pdv(1, 0x03, store_command(generate_uid())))[:3])
    return peer


def half_a_data_set_pdu(pacs) -> RawPeer:
    """The lean C-STORE path's reader, in the middle of a data set PDU."""
    peer = RawPeer(pacs.dicom_port)
    peer.associate(pacs.aet, contexts=STORE_CONTEXT)
    sop_uid = generate_uid()
    peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
    whole = p_data(pdv(1, 0x02, valid_dataset(sop_uid, pixel_bytes=50_000)))
    peer.send(whole[: len(whole) // 2])
    return peer


def whole_pdus_then_silence_mid_data_set(pacs) -> RawPeer:
    """Silence between two PDUs of a data set: the association's idle timer."""
    peer = RawPeer(pacs.dicom_port)
    peer.associate(pacs.aet, contexts=STORE_CONTEXT)
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=50_000)
    peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
    peer.send(p_data(pdv(1, 0x00, data[:20_000])))
    return peer


MID_PDU = [
    half_a_request_header,
    half_a_request_body,
    half_a_pdu_header_once_associated,
    half_a_data_set_pdu,
]
STALLS = [*MID_PDU, whole_pdus_then_silence_mid_data_set]

SHORT_TIMEOUTS = f'''
"""Test only (tests/test_stalled_peers.py): short DICOM timeouts, few associations."""
import pacscore.dicom.scp as _server

_build_ae = _server.build_ae


def build_ae(pacs):
    ae = _build_ae(pacs)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = {DICOM_TIMEOUT}
    ae.maximum_associations = {len(STALLS)}
    return ae


_server.build_ae = build_ae
'''


@pytest.fixture
def pacs(pacs_home, tmp_path):
    """``pacscore serve``, one DICOM process, 2 s timeouts, one association per stall."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHORT_TIMEOUTS)
    pythonpath = ":".join(p for p in (str(shim), pacs_home.env.get("PYTHONPATH", "")) if p)
    pacs_home.start(extra_env={"PYTHONPATH": pythonpath}, args=("--dicom-processes", "1"))
    yield pacs_home
    pacs_home.stop()


def echoscu(pacs):
    return run_dcmtk("echoscu", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port), timeout=30)


def closed_at(peer: RawPeer, deadline: float) -> tuple[float | None, bytes]:
    """When the server closed the connection (None: still open at ``deadline``), and
    what it sent before."""
    received = bytearray()
    while (left := deadline - time.monotonic()) > 0:
        peer.sock.settimeout(left)
        try:
            chunk = peer.sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return time.monotonic(), bytes(received)
        if not chunk:
            return time.monotonic(), bytes(received)
        received += chunk
    return None, bytes(received)


def test_stalled_peers_are_aborted_and_free_their_slots(pacs, tmp_path):
    peers = []
    try:
        for stall in STALLS:
            peer = stall(pacs)
            peers.append((stall.__name__, peer, time.monotonic()))
        # every slot is taken: the server refuses (if the stalls are still younger than
        # its timeouts: a very slow machine may get here later, and prove nothing)
        asked = time.monotonic()
        refused = echoscu(pacs).returncode != 0
        assert refused or asked > peers[0][2] + DICOM_TIMEOUT - 0.5, "no slot was held"

        late = []
        for name, peer, stalled in peers:
            when, received = closed_at(peer, stalled + DICOM_TIMEOUT + MARGIN)
            if when is None:
                late.append(f"{name}: still open {DICOM_TIMEOUT + MARGIN} s after its last byte")
            elif received and received[0] != A_ABORT:  # an A-ABORT, or just closed
                late.append(f"{name}: answered {received[:16]!r} before closing")
        assert not late, "\n".join(late)

        log = pacs.log()
        stalls = [line for line in log.splitlines() if "stopped in the middle of a PDU" in line]
        for name, peer, _ in peers:
            if name in {stall.__name__ for stall in MID_PDU}:
                address = f"127.0.0.1:{peer.sock.getsockname()[1]} "
                assert any(address in line for line in stalls), (name, log[-3000:])
    finally:
        for _, peer, _ in peers:
            peer.sock.close()

    echo = echoscu(pacs)
    assert echo.returncode == 0, f"C-ECHO failed: {echo.stdout}{echo.stderr}"
    stored = pacs.storescu(make_instance(tmp_path / "after", patient_id="STALL1"))
    assert stored.returncode == 0, f"storescu failed: {stored.stdout}{stored.stderr}"
    assert pacs.process.poll() is None


def test_a_slow_but_steady_sender_is_not_cut(pacs):
    """1 MB in PDUs of 128 KiB: the first one dripped over more than the network
    timeout, the others a pause apart; the whole store takes several timeouts."""
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=1_000_000)
    fragment = PDU_BODY - 6  # a PDV item's header is 6 bytes
    fragments = [data[i : i + fragment] for i in range(0, len(data), fragment)]
    started = time.monotonic()
    with RawPeer(pacs.dicom_port) as peer:
        peer.associate(pacs.aet, contexts=STORE_CONTEXT)
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid))))
        for index, piece in enumerate(fragments):
            whole = p_data(pdv(1, 0x02 if index == len(fragments) - 1 else 0x00, piece))
            if index == 0:  # 13 drips 0.2 s apart: 2.6 s for one PDU
                step = len(whole) // 12
                for start in range(0, len(whole), step):
                    peer.send(whole[start : start + step])
                    time.sleep(0.2)
            else:
                time.sleep(DICOM_TIMEOUT / 4)
                peer.send(whole)
        response = peer.read_response()
        assert response.Status == 0x0000, f"0x{response.Status:04X}"
        peer.release()
    assert time.monotonic() - started > 2 * DICOM_TIMEOUT  # slow indeed
    stored, _ = read_dicom_file(pacs.home / "storage" / instance_relpath(sop_uid))
    assert stored == data


# -- pacscore as a client -------------------------------------------------------------


def test_our_association_request_gives_up_on_an_scp_that_stalls():
    """C-ECHO from pacscore to an SCP that sends half an A-ASSOCIATE-AC, then nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def stalling_scp() -> None:
        connection, _ = listener.accept()
        held.append(connection)
        connection.recv(65536)  # the A-ASSOCIATE-RQ
        body = b"\x00" * 100
        connection.sendall(struct.pack(">BBL", 0x02, 0, len(body)) + body[:40])

    threading.Thread(target=stalling_scp, daemon=True).start()
    node = SimpleNamespace(name="stall", aet="STALL", host="127.0.0.1", port=port)
    outcome: list[BaseException | float] = []

    def echo() -> None:
        try:
            outcome.append(scu.echo(node, "PACSCORE", timeout=DICOM_TIMEOUT))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome.append(exc)

    caller = threading.Thread(target=echo, daemon=True)
    caller.start()
    caller.join(DICOM_TIMEOUT + MARGIN + 1)
    try:
        assert outcome, "C-ECHO still waiting on an SCP that stalled mid-PDU"
        assert isinstance(outcome[0], scu.EchoFailed), outcome
    finally:
        listener.close()
        for connection in held:
            with contextlib.suppress(OSError):
                connection.close()
