"""Messages sent through the lean sending path (pacscore/dicom/pynetdicom_ext/lean_send.py) are
the very PDUs pynetdicom would send, and DCMTK peers receive them whole at any
maximum PDU length."""

from __future__ import annotations

import re
import threading
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage

from pacscore.db import connection
from pacscore.dicom import pynetdicom_ext
from pacscore.dicom import scp as server_module
from pacscore.dicom.pynetdicom_ext import lean_send
from pacscore.dicom.scu import client_ae
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.models import Node
from tests.conftest import free_port, run_dcmtk
from tests.dicomgen import make_instance
from tests.test_command_sets import MESSAGES, message_for, store_rq
from tests.test_dicom_services import storescp  # noqa: F401 (fixture)

LARGE_STORE = store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", 0, "", 0)
LARGE_STORE[1].DataSet = BytesIO(bytes(range(256)) * 200)  # 51 200 bytes
FRAMED = {**MESSAGES, "C-STORE-RQ, 51 200 bytes": LARGE_STORE}


@pytest.fixture(autouse=True)
def installed():
    pynetdicom_ext.install_client()


def pynetdicom_pdus(message, context_id: int, max_pdu: int) -> bytes:
    primitives = lean_send.pynetdicom_encode_msg(message, context_id, max_pdu)
    return b"".join(P_DATA_TF(primitive).encode() for primitive in primitives)


@pytest.mark.parametrize("max_pdu", [0, 20, 4096, 16384, 131072])
@pytest.mark.parametrize("name", FRAMED)
def test_a_message_is_framed_as_pynetdicom_frames_it(name, max_pdu):
    message = message_for(*FRAMED[name])
    (encoded,) = message.encode_msg(3, max_pdu)
    assert isinstance(encoded, lean_send.EncodedMessage)
    assert encoded.encoded == pynetdicom_pdus(message, 3, max_pdu)


def ct_file(folder, pixels: int, study_uid: str | None = None):
    """A CT image of ``pixels`` x ``pixels`` 16-bit pixels."""
    return make_instance(
        folder, sop_uid=generate_uid(), study_uid=study_uid, rows=pixels, columns=pixels
    )


def test_pdu_watchers_still_see_every_pdu(storescp, tmp_path):  # noqa: F811
    path = ct_file(tmp_path / "in", 160)  # about 51 KB of pixel data: 4 PDUs at 16 KB
    seen: list[P_DATA_TF] = []
    ae = client_ae("WATCHER", timeout=10)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        storescp.port,
        ae_title=storescp.aet,
        evt_handlers=[(evt.EVT_PDU_SENT, lambda event: seen.append(event.pdu))],
    )
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(path))
    assoc.release()
    assert status.Status == 0x0000
    data = [pdu for pdu in seen if isinstance(pdu, P_DATA_TF)]
    max_pdu = assoc.acceptor.maximum_length
    # the command set, then the data set in fragments of at most max_pdu - 6 bytes
    items = [item for pdu in data for item in pdu.presentation_data_value_items]
    assert [item.message_control_header_byte for item in items] == [
        "00000011",
        *["00000000"] * (len(data) - 2),
        "00000010",
    ]
    # (the value carries the control header byte before the fragment)
    assert all(len(item.presentation_data_value) - 1 <= max_pdu - 6 for item in items)
    assert len(data) >= 4
    (received,) = storescp.files()
    assert dcmread(received).PixelData == dcmread(path).PixelData


@pytest.mark.parametrize("max_pdu", ["4096", "131072"])
def test_get_delivers_whole_instances_at_any_maximum_pdu(server, tmp_path, max_pdu):
    study = generate_uid()
    paths = [ct_file(tmp_path / "in", 200, study) for _ in range(3)]  # 80 KB each
    assert server.storescu(*paths).returncode == 0
    server.cli("node", "add", "ws", "--aet", "GETTER", "--host", "127.0.0.1", "--port", "1",
               "--allow", "get")  # fmt: skip
    out = tmp_path / "got"
    out.mkdir()
    result = run_dcmtk(
        "getscu", "-aet", "GETTER", "-aec", server.aet, "-S", "--max-pdu", max_pdu,
        "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(server.dicom_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sent = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, paths)}
    got = [dcmread(p) for p in out.iterdir()]
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(sent)
    for ds in got:
        assert ds == sent[str(ds.SOPInstanceUID)]


@pytest.fixture
def listener(make_pacs):
    pacs = make_pacs()
    port = free_port()
    dicom = server_module.start_dicom_server(pacs, "127.0.0.1", port)
    with connection():
        Node.create(
            name="ws", aet="GETTER", host="127.0.0.1", port=1, allow_find=True, allow_get=True
        )
    pacs.nodes.invalidate()
    yield pacs, port
    dicom.shutdown()


def test_the_association_thread_writes_its_messages_itself(listener, tmp_path, monkeypatch):
    """C-FIND responses and C-GET sub-operations leave from the association thread,
    without a hand-over to the DUL thread, and arrive whole and in order."""
    pacs, port = listener
    writers: list[str] = []
    write = lean_send._write

    def recording_write(dul, encoded):
        writers.append(type(threading.current_thread()).__name__)
        write(dul, encoded)

    monkeypatch.setattr(lean_send, "_write", recording_write)
    study = generate_uid()
    for _ in range(3):
        data, ts = read_dicom_file(ct_file(tmp_path / "in", 100, study))
        with connection():
            assert pacs.archive.store(data, ts, calling_ae="MODALITY").ok
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    count = ["-k", "NumberOfStudyRelatedInstances"]
    found = run_dcmtk("findscu", "-aet", "GETTER", "-aec", pacs.config.aet, "-S", *keys,
                      *count, "127.0.0.1", str(port), "-v")  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert re.search(r"\[3 ?\] +#.*NumberOfStudyRelatedInstances", found.stdout + found.stderr)
    out = tmp_path / "got"
    out.mkdir()
    got = run_dcmtk("getscu", "-aet", "GETTER", "-aec", pacs.config.aet, "-S", "-od", str(out),
                    *keys, "127.0.0.1", str(port))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert len(list(out.iterdir())) == 3
    # C-FIND: one pending and one final response; C-GET: three sub-operations, a
    # pending response after each, the final one
    assert writers.count("Association") == 2 + 3 * 2 + 1
