"""A reply pynetdicom's reactor takes during a send reaches the sender
(pacscore/dicom/pynetdicom_ext/reply_race.py).

The race needs the association's reactor to wake late from its pause and the
sender to reach its blocking read late, which a busy machine does now and
then.  Both delays are made certain here; the peer is DCMTK's storescp.
"""

from __future__ import annotations

import threading
import time

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification

from pacscore.dicom.scu import client_ae
from tests.dicomgen import make_instance
from tests.test_dicom_services import storescp  # noqa: F401 (fixture)

REACTOR_LATE = 0.05
SENDER_LATE = 0.15


class LateWakingCheckpoint(threading.Event):
    """The reactor's pause point, where the reactor wakes ``REACTOR_LATE`` late."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.assoc = assoc
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        if threading.current_thread() is self.assoc:
            time.sleep(REACTOR_LATE)
        return woken


def with_late_threads(assoc: Association) -> Association:
    assoc._reactor_checkpoint = LateWakingCheckpoint(assoc)
    get_msg = assoc.dimse.get_msg

    def late_blocking_read(block: bool = False):
        if block:
            time.sleep(SENDER_LATE)
        return get_msg(block)

    assoc.dimse.get_msg = late_blocking_read
    return assoc


def test_replies_taken_by_the_reactor_reach_the_waiting_sender(storescp, tmp_path):  # noqa: F811
    ae = client_ae("RACER", timeout=5)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    sop_uids = [generate_uid() for _ in range(3)]
    assoc = ae.associate("127.0.0.1", storescp.port, ae_title=storescp.aet)
    assert assoc.is_established
    with_late_threads(assoc)
    try:
        for _ in range(3):
            assert assoc.send_c_echo().get("Status") == 0x0000
        for sop_uid in sop_uids:
            path = make_instance(tmp_path / sop_uid, patient_id="RACE", sop_uid=sop_uid)
            assert assoc.send_c_store(dcmread(path)).get("Status") == 0x0000
        assert assoc.is_established, "the association was aborted"
    finally:
        assoc.release()
    received = {dcmread(path).SOPInstanceUID for path in storescp.files()}
    assert received == set(sop_uids)
