"""The lean C-STORE path: a C-STORE request handled where its PDUs are read.

pynetdicom's generic path costs several milliseconds of CPU per instance and
a millisecond or two of latency: the DUL thread decodes each PDU into
objects, queues it, the association thread polls the queue (1 ms sleeps),
the DIMSE layer rebuilds the command set as a pydicom data set, dispatches
an event, and the response travels the same way back.  Here, for an
association our AE accepted and while it is established (state Sta6), the
DUL thread reads a P-DATA-TF PDU, splits its PDVs itself and:

* collects a C-STORE-RQ (command set decoded by a small implicit VR little
  endian reader, data set fragments appended as bytes), stores it with
  :func:`pacscore.dicom.store_scp.store_dataset` and sends the C-STORE-RSP PDU
  directly;
* passes every other message (C-ECHO, C-FIND, C-MOVE, C-GET, responses to
  our C-GET sub-operations, anything unusual or malformed) to pynetdicom
  unchanged, as P-DATA-TF PDUs carrying the same PDVs in the same order.

Only a request pynetdicom would route to the Storage service is taken: a
command set with Command Field C-STORE-RQ and a data set, on an accepted
presentation context where we are the SCP whose abstract syntax is a storage
SOP class and equals the Affected SOP Class UID.  The association state
machine is not bypassed: receiving and sending P-DATA in Sta6 (actions DT-1
and DT-2) changes no state.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from pynetdicom import StoragePresentationContexts
from pynetdicom.dul import DULServiceProvider

from pacscore.dicom.pynetdicom_ext.dul_guard import MAX_PDU_READ, receive_into
from pacscore.dicomfile import status

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
COMMAND_BIT, LAST_BIT = 0x01, 0x02
# a command set is a few hundred bytes; more means a peer we should not trust
MAX_COMMAND_BYTES = 64 * 1024
STORAGE_CLASSES = frozenset(cx.abstract_syntax for cx in StoragePresentationContexts)

# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": (  # wrapped
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"
    ),
    "pynetdicom.dul.DULServiceProvider._decode_pdu": (  # fed what is forwarded
        "fc71dd1bf853e1ce79d29b11731a26a4f6ee9eb697026ad611f8fc91f8aa69c9"
    ),
}


# -- command sets (PS3.7 section 6.3: always implicit VR little endian) -------------------


def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number -> raw value of a group 0000 command set; ValueError if malformed."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise ValueError("truncated command element")
        group, element, length = struct.unpack_from("<HHL", data, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            raise ValueError(f"invalid command element ({group:04X},{element:04X})")
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def _us(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _ui(elements: dict[int, bytes], element: int) -> str:
    return elements.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_store_response(request: StoreRequest, code: int, comment: str = "") -> bytes:
    """The C-STORE-RSP command set answering ``request``."""
    body = _element(0x0002, _padded(request.sop_class_uid, b"\x00"))
    body += _element(0x0100, struct.pack("<H", C_STORE_RSP))
    body += _element(0x0120, struct.pack("<H", request.message_id))
    body += _element(0x0800, struct.pack("<H", NO_DATA_SET))
    body += _element(0x0900, struct.pack("<H", code))
    if comment and code != status.SUCCESS:
        body += _element(0x0902, _padded(comment[:64], b" "))  # Error Comment, LO
    body += _element(0x1000, _padded(request.sop_instance_uid, b"\x00"))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def encode_p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one PDV."""
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBL", P_DATA_TF, 0, len(item)) + item


def split_pdvs(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """(context ID, message control header, fragment) of each PDV of a P-DATA-TF body."""
    pdvs, offset, end = [], 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise ValueError("truncated PDV item")
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or length > end - offset - 4:
            raise ValueError(f"invalid PDV item length {length}")
        pdvs.append((body[offset + 4], body[offset + 5], body[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return pdvs


# -- one association ------------------------------------------------------------------


@dataclass
class StoreRequest:
    context_id: int
    transfer_syntax: str
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    # views of the received PDUs, joined once when the data set is whole
    fragments: list[memoryview] = field(default_factory=list)


class LeanStoreReader:
    """Per-association state of the lean path (lives on the DUL object)."""

    def __init__(self, dul: DULServiceProvider, pacs) -> None:
        self.dul = dul
        self.pacs = pacs
        self.command = bytearray()
        self.held: list[tuple[int, int, memoryview]] = []  # command PDVs awaiting a decision
        self.request: StoreRequest | None = None  # a C-STORE we are collecting
        self.forwarding = False  # the current message is pynetdicom's
        self.forward_data_set = False  # ... and a data set follows its command

    # PDVs of one PDU in, PDVs for pynetdicom out
    def feed(self, pdvs: list[tuple[int, int, memoryview]]) -> list[tuple[int, int, memoryview]]:
        forward: list[tuple[int, int, memoryview]] = []
        for pdv in pdvs:
            forward.extend(self._one(pdv))
        return forward

    def _one(self, pdv: tuple[int, int, memoryview]) -> list[tuple[int, int, memoryview]]:
        context_id, control, fragment = pdv
        is_command, is_last = bool(control & COMMAND_BIT), bool(control & LAST_BIT)
        if self.request is not None:
            return self._data_set_fragment(pdv)
        if self.forwarding:
            if is_command and is_last and not self.forward_data_set or not is_command and is_last:
                self.forwarding = False
            return [pdv]
        if not is_command:
            return [pdv]  # a data set without a command: pynetdicom answers that
        self.held.append(pdv)
        self.command += fragment
        if len(self.command) > MAX_COMMAND_BYTES:
            raise ValueError("command set too long")
        if not is_last:
            return []
        return self._decide(context_id)

    def _decide(self, context_id: int) -> list[tuple[int, int, memoryview]]:
        """A whole command set is in: take the message, or forward it to pynetdicom."""
        held, command = self.held, bytes(self.command)
        self.held, self.command = [], bytearray()
        # a command set that does not parse is invalid whatever its message
        # (pynetdicom's own decoder may raise in the association thread): abort
        elements = parse_command(command)
        request = self._store_request(context_id, elements)
        if request is not None:
            self.request = request
            return []
        has_data_set = _us(elements, 0x0800) != NO_DATA_SET
        self.forwarding = self.forward_data_set = has_data_set
        return held

    def _store_request(self, context_id: int, elements: dict[int, bytes]) -> StoreRequest | None:
        if _us(elements, 0x0100) != C_STORE_RQ or _us(elements, 0x0800) == NO_DATA_SET:
            return None
        context = self.dul.assoc._accepted_cx.get(context_id)
        sop_class = _ui(elements, 0x0002)
        message_id = _us(elements, 0x0110)
        if (
            context is None
            or not context.as_scp
            or context.abstract_syntax not in STORAGE_CLASSES
            or context.abstract_syntax != sop_class
            or message_id is None
        ):
            return None
        return StoreRequest(
            context_id,
            str(context.transfer_syntax[0]),
            message_id,
            sop_class,
            _ui(elements, 0x1000),
        )

    def _data_set_fragment(self, pdv) -> list:
        context_id, control, fragment = pdv
        request = self.request
        assert request is not None
        if control & COMMAND_BIT or context_id != request.context_id:
            raise ValueError("a C-STORE data set was interrupted by another PDV")
        request.fragments.append(fragment)
        if control & LAST_BIT:
            self.request = None
            self._store(request)
        return []

    def _store(self, request: StoreRequest) -> None:
        from pacscore.dicom.store_scp import store_dataset

        assoc = self.dul.assoc
        try:
            code, comment = store_dataset(
                self.pacs,
                b"".join(request.fragments),
                request.transfer_syntax,
                calling_ae=assoc.requestor.ae_title,
                called_ae=assoc.acceptor.ae_title,
                sop_instance_uid=request.sop_instance_uid,
            )
        except Exception:  # noqa: BLE001 - answer the peer whatever went wrong
            log.exception("C-STORE of %s failed", request.sop_instance_uid)
            code, comment = status.OUT_OF_RESOURCES, "internal error"
        response = encode_store_response(request, code, comment)
        self.dul.socket.send(encode_p_data(request.context_id, COMMAND_BIT | LAST_BIT, response))


# -- the DUL hooks ----------------------------------------------------------------------


def _reader(dul: DULServiceProvider) -> LeanStoreReader | None:
    """The lean reader of an association our server accepted, once established."""
    reader = getattr(dul, "_pacs_lean", None)
    if reader is not None:
        return reader if dul.state_machine.current_state == "Sta6" else None
    assoc = dul.assoc
    pacs = getattr(assoc.ae, "pacs", None)
    if pacs is None or not assoc.is_acceptor or dul.state_machine.current_state != "Sta6":
        return None
    dul._pacs_lean = LeanStoreReader(dul, pacs)
    return dul._pacs_lean


def _read_exactly(dul: DULServiceProvider, count: int) -> bytearray | None:
    """Read ``count`` bytes straight into one buffer (pynetdicom reads 4 KiB at a time);
    None if the peer closed, failed or stalled (dul_guard: at most the network timeout
    without a byte, then the association is aborted)."""
    conn = dul.socket
    if conn is None or conn.socket is None or count > MAX_PDU_READ:
        return None
    buffer = bytearray(count)
    try:
        done = receive_into(conn, memoryview(buffer))
    except OSError:
        return None
    return buffer if done == count else None


def _forward(dul: DULServiceProvider, pdu: bytes) -> None:
    """Hand a PDU to pynetdicom as if it had read it itself."""
    try:
        decoded, event = dul._decode_pdu(bytearray(pdu))
    except Exception:  # noqa: BLE001 - pynetdicom's own reaction to an invalid PDU
        log.error("unable to decode a received PDU")
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(decoded)


def install() -> None:
    """Wrap pynetdicom's PDU reader."""
    read_pdu = DULServiceProvider._read_pdu_data

    def read_pdu_data(self: DULServiceProvider) -> None:
        reader = _reader(self)
        if reader is None:
            return read_pdu(self)
        header = _read_exactly(self, 6)
        if header is None:
            self.event_queue.put("Evt17")  # connection closed
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in range(0x01, 0x08):
            log.error("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")
            return
        body = _read_exactly(self, length)
        if body is None:
            log.error("the connection closed or stalled before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if pdu_type != P_DATA_TF:
            return _forward(self, bytes(header + body))
        try:
            forward = reader.feed(split_pdvs(memoryview(body)))
        except ValueError as exc:
            log.error("invalid P-DATA from %s: %s", self.assoc.requestor.ae_title, exc)
            self.event_queue.put("Evt19")  # pynetdicom aborts the association
            return
        if forward:
            items = b"".join(
                struct.pack(">LBB", len(frag) + 2, cx, ctl) + frag for cx, ctl, frag in forward
            )
            _forward(self, struct.pack(">BBL", P_DATA_TF, 0, len(items)) + items)

    DULServiceProvider._read_pdu_data = read_pdu_data
