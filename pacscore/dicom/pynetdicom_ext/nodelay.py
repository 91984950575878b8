"""TCP_NODELAY on every DICOM socket, accepted or opened.

DIMSE responses go out as several small writes; with Nagle's algorithm on,
each waits for the peer's delayed ACK (~40 ms), which made a C-FIND take
50 ms instead of 6 and halved C-MOVE throughput.  pynetdicom offers no
socket-option hook, so its accept and connect paths are wrapped here.
"""

from __future__ import annotations

import contextlib
import socket

from pynetdicom.transport import AssociationServer, AssociationSocket

# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.transport.AssociationServer.get_request": (  # wrapped
        "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300"
    ),
    "pynetdicom.transport.AssociationSocket._create_socket": (  # wrapped
        "bf8b92b106c8aa07e6a0d6cf483002f71bdab3320fda7f0fefeb99d7c52a10f6"
    ),
}


def _no_delay(sock: socket.socket) -> socket.socket:
    with contextlib.suppress(OSError):  # not a TCP socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def install() -> None:
    accept = AssociationServer.get_request
    create = AssociationSocket._create_socket

    def get_request(self):
        client, address = accept(self)
        return _no_delay(client), address

    def create_socket(self, address):
        return _no_delay(create(self, address))

    AssociationServer.get_request = get_request
    AssociationSocket._create_socket = create_socket
