"""An idle association, ours or a peer's, costs next to no CPU
(pacscore/dicom/pynetdicom_ext/reactor_waits.py).

pynetdicom's two threads per association polled every millisecond, up to a
thousand turns of each loop per second (about 0.1 s of CPU per second per
open association) even with nothing to do.  With blocking waits each loop
turns only on work or on its 50 ms timer.  The tests count the loops' turns,
not CPU seconds, which depend on the machine.
"""

from __future__ import annotations

import time

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import Verification

from pacscore.dicom.pynetdicom_ext import reactor_waits
from pacscore.dicom.scp import start_dicom_server
from pacscore.dicom.scu import client_ae
from tests.conftest import free_port
from tests.test_robustness import RawPeer, p_data, pdv, store_command, valid_dataset

IDLE_SECONDS = 2.0
# both loops of an idle association: 2 x 20 timer turns per second waiting, up to
# 2 x 1000 polling
MAX_TURNS_PER_SECOND = 100


@pytest.fixture
def listener(make_pacs):
    """(pacs, port): an in-process DICOM listener, stopped afterwards."""
    pacs = make_pacs()
    port = free_port()
    server = start_dicom_server(pacs, "127.0.0.1", port)
    yield pacs, port
    server.shutdown()


@pytest.fixture
def idle_turns_per_second(monkeypatch):
    """Measure how often the associations' two loops (DUL reactor, association reactor)
    turn per second per association while the associations are idle."""
    turns = []
    dul_sleep, assoc_event = reactor_waits._dul_sleep, reactor_waits._assoc_event

    def counted_dul_sleep(dul, seconds):
        turns.append(dul)
        dul_sleep(dul, seconds)

    def counted_assoc_event(assoc):
        turns.append(assoc)
        return assoc_event(assoc)

    monkeypatch.setattr(reactor_waits, "_dul_sleep", counted_dul_sleep)
    monkeypatch.setattr(reactor_waits, "_assoc_event", counted_assoc_event)

    def measure(associations: int) -> float:
        time.sleep(0.3)
        turns.clear()
        time.sleep(IDLE_SECONDS)
        return len(turns) / IDLE_SECONDS / associations

    return measure


def test_idle_associations_do_not_spin_and_still_answer_at_once(listener, idle_turns_per_second):
    pacs, port = listener
    contexts = ((1, CTImageStorage, (ExplicitVRLittleEndian,)),)
    peers = [RawPeer(port) for _ in range(3)]
    try:
        for peer in peers:
            peer.associate(pacs.config.aet, contexts=contexts)
        turns = idle_turns_per_second(len(peers))
        assert 0 < turns < MAX_TURNS_PER_SECOND, f"{turns:.0f} loop turns per second each"

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


def test_idle_requestor_associations_do_not_spin_and_still_send(listener, idle_turns_per_second):
    """Our own client associations (C-MOVE sub-associations, the router) too: pynetdicom's
    requestor loop polled every millisecond, and each send_* waited for its next turn."""
    pacs, port = listener
    ae = client_ae("IDLER", timeout=10)
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", port, ae_title=pacs.config.aet) for _ in range(3)]
    try:
        assert all(assoc.is_established for assoc in assocs)
        turns = idle_turns_per_second(len(assocs))
        assert 0 < turns < MAX_TURNS_PER_SECOND, f"{turns:.0f} loop turns per second each"
        for assoc in assocs:
            assert all(assoc.send_c_echo().get("Status") == 0x0000 for _ in range(20))
    finally:
        for assoc in assocs:
            assoc.release()
