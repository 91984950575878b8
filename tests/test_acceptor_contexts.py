"""What the listener accepts: explicit VR first among the storage syntaxes, from
presentation contexts that each association shares with the server
(pacscore/dicom/pynetdicom_ext/shared_contexts.py)."""

from __future__ import annotations

import inspect
import re

import pynetdicom.transport as transport
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from pacscore.dicom import scp as server_module
from pacscore.dicom.scu import client_ae
from tests.conftest import free_port


@pytest.fixture
def listener(make_pacs):
    pacs = make_pacs()
    port = free_port()
    server = server_module.start_dicom_server(pacs, "127.0.0.1", port)
    yield server, port, pacs.config.aet
    server.shutdown()


def test_pynetdicom_deep_copies_nothing_else_in_its_transport():
    # shared_contexts replaces the module's deepcopy: it must copy only the contexts
    assert re.findall(r"deepcopy\((.*)\)", inspect.getsource(transport)) == ["self.server.contexts"]


def test_associations_share_the_contexts_and_prefer_explicit_vr(listener):
    server, port, aet = listener
    ae = client_ae("PROPOSER", timeout=10)
    # as pynetdicom proposes by default: implicit VR first, in one context
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    try:
        (served,) = server.active_associations
        contexts = served.acceptor.supported_contexts
        assert contexts is not server.contexts
        assert all(a is b for a, b in zip(contexts, server.contexts, strict=True))
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == {
        (CTImageStorage, ExplicitVRLittleEndian),
        (MRImageStorage, ImplicitVRLittleEndian),
        (MRImageStorage, JPEGBaseline8Bit),
    }
