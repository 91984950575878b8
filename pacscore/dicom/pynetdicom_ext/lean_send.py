"""The lean sending path: a DIMSE message leaves as one write of all its PDUs.

pynetdicom sends a message as one P-DATA primitive per fragment.  Each one
goes through the provider queue, the state machine, a P-DATA-TF object and
its generic encoder, an event and a ``send`` of its own: a 525 KB instance
sent to a DCMTK peer (16 KB maximum PDU) is 33 such trips, most of the CPU
of a C-MOVE sub-operation.  Here ``encode_msg`` frames the whole message
itself (the same PDUs, byte for byte: same fragment sizes, one PDV per PDU,
same message control headers) and yields a single :class:`EncodedMessage`;
the state machine's P-DATA actions (DT-1 in Sta6, AR-7 in Sta8, neither
changes the state) write it with one ``send``.  The event queue, the state
machine and the order of messages are pynetdicom's as before, one Evt9 per
message instead of one per PDU.

A message queued by another thread than the DUL thread (the association's:
C-FIND responses, C-GET and C-MOVE sub-operations) is written by that thread
at once when the association is established and nothing else is queued:
the DUL thread would only take it off the queue and send it, a thread
hand-over per message.  One lock per association orders every write to the
socket, and covers the DUL thread from taking a P-DATA primitive off its
queue until it is sent, so a message written directly never overtakes one
queued before it.

``EVT_PDU_SENT`` still fires once per PDU when a handler other than
pynetdicom's standard (debug log) one is bound.  A data set that pynetdicom
streams from a file is framed by pynetdicom as before.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator

from pynetdicom import evt, fsm
from pynetdicom._handlers import standard_pdu_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from pacscore.dicom.pynetdicom_ext import command_sets, per_association

P_DATA_TF_TYPE = 0x04
COMMAND_BIT, LAST_BIT = 0x01, 0x02
# the PDV item's own header: item length (4), context ID (1), control header (1)
PDV_HEADER = 6
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.dimse_messages.DIMSEMessage.encode_msg": (  # replaced: same PDUs
        "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57"
    ),
    "pynetdicom.dul.DULServiceProvider.send_pdu": (  # wrapped
        "7cbce5da8594124e9e70c790a68df640d21df11af4220783e752bc607de8dde6"
    ),
    "pynetdicom.transport.AssociationSocket.send": (  # wrapped
        "1ea8158c0b51facac667a0340b93f495b947fdc4f55663946fb30d456c804e09"
    ),
    "pynetdicom.fsm.DT_1": (  # wrapped
        "82e5c5d4114534fa9ac86124c7c7ef11ff2b98bc73069372cbe413af9df19081"
    ),
    "pynetdicom.fsm.AR_7": (  # wrapped
        "9a8d68182bf5c9fd0762295535a20ef3b1f04d83f22d47dcd55a063dbf806d40"
    ),
    "pynetdicom.fsm.ACTIONS": (  # two entries replaced
        "24a8fe3a7f181752655cb3589c000bbedb83019e8d7f191a7e4df83e27ef3cdf"
    ),
    "pynetdicom._handlers.standard_pdu_sent_handler": (  # told apart
        "5193cd6183c0472958c6a62a1d50fadb3b30bedf46731e40662eb847a4b8d13a"
    ),
}
pynetdicom_encode_msg = DIMSEMessage.encode_msg


class EncodedMessage(P_DATA):
    """A whole DIMSE message as the bytes of its P-DATA-TF PDUs."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self.encoded = encoded


def frame(context_id: int, command: bool, payload: bytes, max_pdu: int) -> list[bytes]:
    """The P-DATA-TF PDUs carrying ``payload`` (a command set or a data set), as
    pynetdicom fragments it: one PDV per PDU, fragments of ``max_pdu - 6`` bytes
    (``max_pdu`` 0: no limit)."""
    size = max_pdu - PDV_HEADER if max_pdu else max(len(payload), 1)
    view = memoryview(payload)
    parts: list[bytes] = []
    for offset in range(0, len(payload), size):
        fragment = view[offset : offset + size]
        control = (COMMAND_BIT if command else 0) | (
            LAST_BIT if offset + size >= len(payload) else 0
        )
        parts.append(
            struct.pack(
                ">BBLLBB",
                P_DATA_TF_TYPE,
                0,
                len(fragment) + PDV_HEADER,
                len(fragment) + 2,
                context_id,
                control,
            )
        )
        parts.append(fragment)
    return parts


def encode_msg(self: DIMSEMessage, context_id: int, max_pdu_length: int) -> Iterator[P_DATA]:
    """``DIMSEMessage.encode_msg``: the whole message as one :class:`EncodedMessage`."""
    if self._data_set_path is not None:  # streamed from a file by pynetdicom
        yield from pynetdicom_encode_msg(self, context_id, max_pdu_length)
        return
    self.context_id = context_id
    command = command_sets.encode(self.command_set, True, True)
    parts = frame(context_id, True, command, max_pdu_length)
    data_set = self.data_set.getvalue() if self.data_set is not None else b""
    if data_set:
        parts += frame(context_id, False, data_set, max_pdu_length)
    yield EncodedMessage(b"".join(parts))


def _watches_pdus(dul: DULServiceProvider) -> bool:
    """A handler other than pynetdicom's debug log is bound to EVT_PDU_SENT."""
    handlers = dul.assoc.get_handlers(evt.EVT_PDU_SENT)
    return any(handler is not standard_pdu_sent_handler for handler, _ in handlers)


def _each_pdu(encoded: bytes) -> Iterator[P_DATA_TF]:
    offset = 0
    while offset < len(encoded):
        (length,) = struct.unpack_from(">L", encoded, offset + 2)
        pdu = P_DATA_TF()
        pdu.decode(encoded[offset : offset + 6 + length])
        yield pdu
        offset += 6 + length


def send_lock(assoc: Association) -> threading.RLock:
    """The association's send lock: held by every write to its socket, and by the
    DUL thread from taking a P-DATA primitive off its queue until it is sent."""
    return per_association(assoc, "_pacs_send_lock", threading.RLock)


def _write(dul: DULServiceProvider, encoded: bytes) -> None:
    dul.socket.send(encoded)
    if _watches_pdus(dul):
        for pdu in _each_pdu(encoded):
            evt.trigger(dul.assoc, evt.EVT_PDU_SENT, {"pdu": pdu})


def _send_encoded(action: Callable[[DULServiceProvider], str], next_state: str) -> Callable:
    """Wrap a state machine action that sends the queued P-DATA primitive."""

    def send(dul: DULServiceProvider) -> str:
        with send_lock(dul.assoc):
            primitive = dul.to_provider_queue.queue[0]
            if not isinstance(primitive, EncodedMessage):
                return action(dul)
            dul.to_provider_queue.get(False)
            if dul.socket is not None:
                _write(dul, primitive.encoded)
            return next_state

    return send


def _sent_directly(dul: DULServiceProvider, primitive: P_DATA) -> bool:
    """Write a message queued from another thread (the association's) at once, when
    the DUL thread has nothing queued or in flight and the association is established:
    the DUL thread would only take it off the queue and send it, one thread hand-over
    per message (a C-FIND response, a C-GET sub-operation) for nothing."""
    if (
        not isinstance(primitive, EncodedMessage)
        or threading.current_thread() is dul
        or dul.socket is None
    ):
        return False
    with send_lock(dul.assoc):
        # Sta6: DT-1 sends P-DATA without changing the state; in any other state the
        # state machine decides.  An empty queue under the lock: nothing sent before
        # this message can still be on its way.
        if dul.state_machine.current_state != "Sta6" or not dul.to_provider_queue.empty():
            return False
        _write(dul, primitive.encoded)
    return True


def install() -> None:
    """Frame whole messages and send them at once."""
    DIMSEMessage.encode_msg = encode_msg
    queue_pdu, socket_send = DULServiceProvider.send_pdu, AssociationSocket.send

    def send_pdu(self: DULServiceProvider, primitive) -> None:
        if not _sent_directly(self, primitive):
            queue_pdu(self, primitive)

    def send(self: AssociationSocket, bytestream: bytes) -> None:
        with send_lock(self.assoc):
            socket_send(self, bytestream)

    DULServiceProvider.send_pdu = send_pdu
    AssociationSocket.send = send
    for name in ("DT-1", "AR-7"):
        description, action, next_state = fsm.ACTIONS[name]
        fsm.ACTIONS[name] = (description, _send_encoded(action, next_state), next_state)
