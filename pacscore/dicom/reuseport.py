"""SO_REUSEPORT on the listening socket, for several listener processes on one port,
and a listen backlog sized for bursts of connections.

pynetdicom binds its server socket itself (``AssociationServer.server_bind``)
and offers no option hook, so the bind is wrapped: an AE with ``reuse_port``
set gets the option before the bind.  See ``pacscore/listeners.py``.
"""

from __future__ import annotations

import socket

from pynetdicom.transport import AssociationServer

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    bind = AssociationServer.server_bind

    def server_bind(self) -> None:
        if getattr(self.ae, "reuse_port", False):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bind(self)

    AssociationServer.server_bind = server_bind
    # socketserver's default backlog of 5 refuses bursts of modalities connecting at once
    AssociationServer.request_queue_size = 128
    _installed = True
