"""Three guards on pynetdicom's DUL layer.

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

3. A peer that stops in the middle of a PDU loses its association.
pynetdicom reads the rest of a PDU with blocking ``recv()`` calls and no
timeout (an accepted socket has none, and pynetdicom clears the one of a
socket it connects once connected): a peer that sent half a PDU header or
body and went silent held the DUL thread for ever, and with it the
association thread (its ``kill()`` waits for the DUL thread) and the slot,
whatever the ACSE, DIMSE and network timeouts said.  Every PDU read,
pynetdicom's (:func:`bounded_recv`, which also reads the A-ASSOCIATE-RQ) and
the lean C-STORE path's (:func:`receive_into`), now waits at most the
association's ``network_timeout`` for the next bytes: bytes that arrive start
that wait again, and restart the association's idle timer too (which
otherwise runs from the last whole PDU), so a slow sender that keeps sending
is never cut.  A stall is logged with the peer's address and aborts the
association as an invalid PDU does (A-ABORT to the peer, then the connection
closed).  The socket stays blocking: a read first tries ``MSG_DONTWAIT``
(the bytes are usually there: no extra system call) and only then waits in
``poll()``.  A TLS socket (pacscore uses none) gets a socket timeout instead,
which also covers a TLS record cut in the middle.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

STEP_SECONDS = 0.05
MAX_PDU_READ = 64 * 1024 * 1024
# pynetdicom's path reads (and grows its buffer) this much at most per recv()
READ_CHUNK = 256 * 1024
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.dul.DULServiceProvider.receive_pdu": (  # wrapped
        "fa67339834ca998cb31eb1806a854864200464b0a9991333d387aa419478c4e6"
    ),
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": (  # reads through recv
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"
    ),
    "pynetdicom.transport.AssociationSocket.recv": (  # replaced
        "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d"
    ),
    "pynetdicom.timer.Timer.restart": (  # the idle timer restarted
        "30af96b32eeff8ae571a060f3fccd4342264bbaae57e20c37965083da8720565"
    ),
}

T = TypeVar("T")


class _Stalled(Exception):
    """No byte came within the network timeout."""


def _readable(sock: socket.socket, seconds: float | None) -> bool:
    poller = select.poll()  # not select(): no limit on the descriptor's number
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if seconds is None else max(0.0, seconds) * 1000))


def _recv(sock: socket.socket, seconds: float | None, recv: Callable[..., T], *args) -> T:
    """``recv(*args)`` (``sock.recv`` or ``sock.recv_into``) as soon as bytes are
    there; ``_Stalled`` if none came within ``seconds`` (None: wait for ever)."""
    if isinstance(sock, ssl.SSLSocket):  # no flags on TLS; a timeout covers half records
        if sock.gettimeout() != seconds:
            sock.settimeout(seconds)
        try:
            return recv(*args)
        except TimeoutError:
            raise _Stalled from None
    while True:
        try:
            return recv(*args, socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            pass
        if not _readable(sock, seconds):
            raise _Stalled


def _peer(conn: AssociationSocket) -> str:
    try:
        host, port = conn.socket.getpeername()[:2]  # type: ignore[union-attr]
    except (AttributeError, OSError):
        return "a peer (address unknown)"
    assoc = conn.assoc
    title = (assoc.requestor if assoc.is_acceptor else assoc.acceptor).ae_title
    return f"{host}:{port}" + (f" ({title})" if assoc.is_established and title else "")


def _stalled(conn: AssociationSocket, received: int, wanted: int, seconds: float | None) -> None:
    log.warning(
        "%s stopped in the middle of a PDU (%d of %d bytes read, then nothing for %s s): "
        "aborting the association",
        _peer(conn), received, wanted, seconds,
    )  # fmt: skip
    # Evt19 (invalid PDU): A-ABORT to the peer; the short read that follows closes
    conn.event_queue.put("Evt19")


def _progress(conn: AssociationSocket) -> None:
    """Bytes arrived: the association is not idle (its timer would abort it)."""
    conn.assoc.dul._idle_timer.restart()


def _socket(conn: AssociationSocket) -> socket.socket:
    if conn.socket is None:
        raise OSError("the connection is closed")
    return conn.socket


def receive_into(conn: AssociationSocket, view: memoryview) -> int:
    """Fill ``view`` from the peer; the number of bytes read, fewer if the peer
    closed the connection or stalled (then logged, and the association aborted).
    OSError if the connection failed."""
    sock, seconds = _socket(conn), conn.assoc.network_timeout
    done, wanted = 0, len(view)
    try:
        while done < wanted:
            got = _recv(sock, seconds, sock.recv_into, view[done:], wanted - done)
            if not got:
                break
            done += got
            _progress(conn)
    except _Stalled:
        _stalled(conn, done, wanted, seconds)
    return done


def bounded_recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: what pynetdicom reads of a PDU, bounded in size and
    in time; a buffer grown as bytes arrive, never to what a peer merely declares."""
    if nr_bytes > MAX_PDU_READ:
        raise OSError(f"peer declared a {nr_bytes}-byte PDU (limit {MAX_PDU_READ})")
    sock, seconds = _socket(self), self.assoc.network_timeout
    data = bytearray()
    try:
        while len(data) < nr_bytes:
            chunk = _recv(sock, seconds, sock.recv, min(nr_bytes - len(data), READ_CHUNK))
            if not chunk:
                break  # closed: pynetdicom sees a short read, as with its own recv
            data += chunk
            _progress(self)
    except _Stalled:
        _stalled(self, len(data), nr_bytes, seconds)
    return data


def install() -> None:
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
    AssociationSocket.recv = bounded_recv
