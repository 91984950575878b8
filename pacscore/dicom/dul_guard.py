"""Free an association slot as soon as its connection is gone.

pynetdicom's acceptor waits the whole ACSE timeout for an A-ASSOCIATE-RQ
even when the peer already closed the socket (a port scan, a TCP health
check): 65 bare connects within 30 s filled the 64 slots and every real
peer was rejected with "Local Limit Exceeded".  The wrapped wait below
returns as soon as the DUL thread, which owns the socket, has ended.
"""

from __future__ import annotations

import time

from pynetdicom.dul import DULServiceProvider

STEP_SECONDS = 0.05
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

    DULServiceProvider.receive_pdu = receive_pdu
    _installed = True
