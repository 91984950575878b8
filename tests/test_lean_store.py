"""The lean C-STORE path (pacscore/dicom/pynetdicom_ext/lean_store.py) takes the C-STORE requests
and only those; everything else still reaches pynetdicom, and bad framing or a
broken peer never costs an instance or the listener.

An in-process listener counts which path answered each request: the lean one
(``store_dataset`` called from the DUL thread) or pynetdicom's (``handle_store``).
The wire is driven by the raw peer of test_robustness, byte by byte when needed.
"""

from __future__ import annotations

import struct
import threading

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from pacscore.db import connection
from pacscore.dicom import scp as server_module
from pacscore.dicom import store_scp as store_module
from pacscore.dicom.pynetdicom_ext import lean_store
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.models import Instance
from pacscore.storage import instance_relpath
from tests.conftest import free_port
from tests.test_robustness import (
    A_ABORT,
    FRAMINGS,
    RawPeer,
    assert_abort_or_close,
    p_data,
    pdv,
    store_command,
    valid_dataset,
)

VERIFICATION = "1.2.840.10008.1.1"
CT_CONTEXT = ((1, CTImageStorage, (ExplicitVRLittleEndian,)),)


class Paths:
    """Counts the requests each path answered."""

    def __init__(self) -> None:
        self.lean = 0
        self.pynetdicom = 0


@pytest.fixture
def listener(make_pacs, monkeypatch):
    pacs = make_pacs()
    paths = Paths()
    store_dataset = store_module.store_dataset
    handle_store = store_module.handle_store

    def counted_store(*args, **kwargs):
        if isinstance(threading.current_thread(), lean_store.DULServiceProvider):
            paths.lean += 1
        return store_dataset(*args, **kwargs)

    def counted_handle(event, pacs):
        paths.pynetdicom += 1
        return handle_store(event, pacs)

    monkeypatch.setattr(store_module, "store_dataset", counted_store)
    monkeypatch.setattr(server_module, "handle_store", counted_handle)
    port = free_port()
    server = server_module.start_dicom_server(pacs, "127.0.0.1", port)
    pacs.port, pacs.paths = port, paths
    yield pacs
    server.shutdown()


def stored_bytes(pacs, sop_uid: str) -> bytes | None:
    with connection():
        row = Instance.get_or_none(Instance.sop_uid == sop_uid)
    if row is None:
        return None
    data, _ = read_dicom_file(pacs.config.home / "storage" / instance_relpath(sop_uid))
    return data


def test_every_framing_is_taken_by_the_lean_path_and_stored_exactly(listener):
    with RawPeer(listener.port) as peer:
        peer.associate(listener.config.aet, contexts=CT_CONTEXT)
        for message_id, (name, framing) in enumerate(FRAMINGS.items(), start=1):
            sop_uid = generate_uid()
            data = valid_dataset(sop_uid, pixel_bytes=500 + 2 * message_id)
            for write in framing(store_command(sop_uid, message_id=message_id), data):
                peer.send(write)
            rsp = peer.read_response()
            assert (rsp.Status, rsp.MessageIDBeingRespondedTo) == (0, message_id), name
            assert rsp.AffectedSOPInstanceUID == sop_uid
            assert stored_bytes(listener, sop_uid) == data, name
        peer.release()
    assert (listener.paths.lean, listener.paths.pynetdicom) == (len(FRAMINGS), 0)


def test_a_data_set_spread_over_many_pdus_and_pdvs(listener):
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=300_000)
    chunks = [data[i : i + 7001] for i in range(0, len(data), 7001)]
    with RawPeer(listener.port) as peer:
        peer.associate(listener.config.aet, contexts=CT_CONTEXT)
        command = store_command(sop_uid)
        peer.send(p_data(pdv(1, 0x01, command[:20])) + p_data(pdv(1, 0x03, command[20:])))
        for i in range(0, len(chunks), 3):  # three PDVs per PDU
            group = chunks[i : i + 3]
            last = i + 3 >= len(chunks)
            pdvs = [pdv(1, 0x02 if last and j == len(group) - 1 else 0x00, c) for j, c in
                    enumerate(group)]  # fmt: skip
            peer.send(p_data(*pdvs))
        assert peer.read_response().Status == 0x0000
        peer.release()
    assert stored_bytes(listener, sop_uid) == data
    assert listener.paths.lean == 1


def test_other_messages_still_reach_pynetdicom_on_the_same_association(listener):
    """C-ECHO between two stores, and a C-STORE whose SOP class is not its context's."""
    echo = struct.pack("<HHL", 0, 0x0002, 18) + VERIFICATION.encode().ljust(18, b"\x00")
    echo += struct.pack("<HHLH", 0, 0x0100, 2, 0x0030)  # C-ECHO-RQ
    echo += struct.pack("<HHLH", 0, 0x0110, 2, 7)  # Message ID
    echo += struct.pack("<HHLH", 0, 0x0800, 2, 0x0101)  # no data set
    echo = struct.pack("<HHLL", 0, 0x0000, 4, len(echo)) + echo
    with RawPeer(listener.port) as peer:
        peer.associate(
            listener.config.aet,
            contexts=(*CT_CONTEXT, (3, VERIFICATION, (ExplicitVRLittleEndian,))),
        )
        first, second = generate_uid(), generate_uid()
        peer.send(p_data(pdv(1, 0x03, store_command(first)), pdv(1, 0x02, valid_dataset(first))))
        assert peer.read_response().Status == 0x0000
        peer.send(p_data(pdv(3, 0x03, echo)))
        rsp = peer.read_response()
        assert (rsp.CommandField, rsp.Status, rsp.MessageIDBeingRespondedTo) == (0x8030, 0, 7)
        # an MR SOP class on the CT context: pynetdicom's path, as before the lean one
        mismatch = store_command(second, sop_class=MRImageStorage, message_id=9)
        peer.send(p_data(pdv(1, 0x03, mismatch), pdv(1, 0x02, valid_dataset(second))))
        assert peer.read_response().MessageIDBeingRespondedTo == 9
        peer.release()
    assert listener.paths.lean == 1
    assert listener.paths.pynetdicom == 1


def test_an_abort_mid_data_set_stores_nothing_and_the_next_peer_is_served(listener):
    sop_uid = generate_uid()
    data = valid_dataset(sop_uid, pixel_bytes=50_000)
    with RawPeer(listener.port) as peer:
        peer.associate(listener.config.aet, contexts=CT_CONTEXT)
        peer.send(p_data(pdv(1, 0x03, store_command(sop_uid)), pdv(1, 0x00, data[:20_000])))
        peer.send(A_ABORT)
        peer.close_and_drain()
    assert stored_bytes(listener, sop_uid) is None
    test_every_framing_is_taken_by_the_lean_path_and_stored_exactly(listener)


@pytest.mark.parametrize(
    "bad_pdu",
    [
        # a PDV item longer than its PDU
        struct.pack(">BBL", 4, 0, 10) + struct.pack(">LBB", 50, 1, 3) + b"\x00" * 4,
        # a command element longer than the command set
        lambda: p_data(pdv(1, 0x03, struct.pack("<HHL", 0, 0x0100, 400) + b"\x01\x00")),
        # a command PDV in the middle of a C-STORE data set
        lambda: (
            p_data(pdv(1, 0x03, store_command("1.2.3")), pdv(1, 0x00, b"\x08\x00" * 8))
            + p_data(pdv(1, 0x03, store_command("1.2.4")))
        ),
    ],
    ids=["pdv-overflow", "bad-command-element", "interrupted-data-set"],
)
def test_malformed_p_data_aborts_that_association_only(listener, bad_pdu):
    with RawPeer(listener.port) as peer:
        peer.associate(listener.config.aet, contexts=CT_CONTEXT)
        peer.send(bad_pdu() if callable(bad_pdu) else bad_pdu)
        assert_abort_or_close(peer.close_and_drain())
    test_every_framing_is_taken_by_the_lean_path_and_stored_exactly(listener)
