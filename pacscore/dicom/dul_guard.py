"""Two guards on pynetdicom's DUL layer.

1. Free an association slot as soon as its connection is gone.

pynetdicom's acceptor waits the whole ACSE timeout for an A-ASSOCIATE-RQ
even when the peer already closed the socket (a port scan, a TCP health
check): 65 bare connects within 30 s filled the 64 slots and every real
peer was rejected with "Local Limit Exceeded".  The wrapped wait below
returns as soon as the DUL thread, which owns the socket, has ended.

2. Bound what one PDU may make us allocate.  pynetdicom reads a PDU of
whatever length the peer declares (up to 4 GiB) into memory; a read asking
for more than ``MAX_PDU_READ`` now fails like a closed connection.  Peers
keep to the maximum PDU length we advertise (128 KiB); the bound leaves room
for those that do not, without letting one connection exhaust memory.
"""

from __future__ import annotations

import time

from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

STEP_SECONDS = 0.05
MAX_PDU_READ = 64 * 1024 * 1024
_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    receive = DULServiceProvider.receive_pdu

    def receive_pdu(self, wait: bool = False, timeout: float | None = None):
        if not wait:
            return receive(self, wait, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = STEP_SECONDS
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            primitive = receive(self, True, step)
            if primitive is not None:
                return primitive
            expired = deadline is not None and time.monotonic() >= deadline
            if expired or not self.is_alive():
                return receive(self, False, None)

    recv = AssociationSocket.recv

    def bounded_recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_READ:
            raise OSError(f"peer declared a {nr_bytes}-byte PDU (limit {MAX_PDU_READ})")
        return recv(self, nr_bytes)

    DULServiceProvider.receive_pdu = receive_pdu
    AssociationSocket.recv = bounded_recv
    _installed = True
