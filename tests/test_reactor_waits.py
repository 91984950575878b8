"""An idle association, ours or a peer's, costs next to no CPU
(pacscore/dicom/reactor_waits.py).

pynetdicom's two threads per association polled every millisecond: about
0.1 s of CPU per second per open association, measured here, even with
nothing to do.  With blocking waits the same association costs a few ms.
"""

from __future__ import annotations

import time

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import Verification

from pacscore.dicom.scu import client_ae
from pacscore.dicom.server import start_dicom_server
from tests.conftest import free_port
from tests.test_robustness import RawPeer, p_data, pdv, store_command, valid_dataset

IDLE_SECONDS = 2.0
# polling measured ~0.1 s of CPU per second; waiting ~0.005
MAX_CPU_PER_SECOND = 0.03
# a requestor's loop polled more cheaply: ~0.017 s per second against ~0.004 waiting
MAX_REQUESTOR_CPU_PER_SECOND = 0.01


@pytest.fixture
def listener(make_pacs):
    """(pacs, port): an in-process DICOM listener, stopped afterwards."""
    pacs = make_pacs()
    port = free_port()
    server = start_dicom_server(pacs, "127.0.0.1", port)
    yield pacs, port
    server.shutdown()


def idle_cpu_per_second(associations: int) -> float:
    """CPU seconds this process spends per second per association while they are idle."""
    time.sleep(0.3)
    before = time.process_time()
    time.sleep(IDLE_SECONDS)
    return (time.process_time() - before) / IDLE_SECONDS / associations


def test_idle_associations_do_not_spin_and_still_answer_at_once(listener):
    pacs, port = listener
    contexts = ((1, CTImageStorage, (ExplicitVRLittleEndian,)),)
    peers = [RawPeer(port) for _ in range(3)]
    try:
        for peer in peers:
            peer.associate(pacs.config.aet, contexts=contexts)
        spent = idle_cpu_per_second(len(peers))
        assert spent < MAX_CPU_PER_SECOND, f"{spent:.3f} s of CPU per second per association"

        # woken by the request, not by a timer: each answered, then released
        for peer in peers:
            sop_uid = generate_uid()
            command, data = store_command(sop_uid), valid_dataset(sop_uid)
            peer.send(p_data(pdv(1, 0x03, command), pdv(1, 0x02, data)))
            assert peer.read_response().Status == 0x0000
            peer.release()
    finally:
        for peer in peers:
            peer.sock.close()


def test_idle_requestor_associations_do_not_spin_and_still_send(listener):
    """Our own client associations (C-MOVE sub-associations, the router) too: pynetdicom's
    requestor loop polled every millisecond, and each send_* waited for its next turn."""
    pacs, port = listener
    ae = client_ae("IDLER", timeout=10)
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", port, ae_title=pacs.config.aet) for _ in range(3)]
    try:
        assert all(assoc.is_established for assoc in assocs)
        spent = idle_cpu_per_second(len(assocs))
        assert spent < MAX_REQUESTOR_CPU_PER_SECOND, f"{spent:.4f} s of CPU per second each"
        for assoc in assocs:
            assert all(assoc.send_c_echo().get("Status") == 0x0000 for _ in range(20))
    finally:
        for assoc in assocs:
            assoc.release()
