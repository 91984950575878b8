"""One listening socket shared by every listener process, and connections spread
by load.

``pacscore serve`` binds the DICOM port itself and hands the socket to its
child listeners (``pacscore dicom-listener --listen-fd N``); every process
accepts from the same queue.  With SO_REUSEPORT, which this replaces, the
kernel picked the process by a hash of the peer's address, blind to load: one
time in eight, four modalities connecting at once all landed in one process
of two, sharing one GIL while the other core idled.  Here the socket is
non-blocking, every process is woken by a new connection, and each waits
``ACCEPT_DELAY_SECONDS`` per association it is serving before it tries to
accept: the least busy process usually wins, a loser gets EAGAIN and goes
back to waiting.

The parent binds the port before it starts its children but listens only
once every child has reported ready (``pacscore/listeners.py``, the start
gate): until then a connection is refused, as by a stopped server, rather
than accepted by a process that would keep it while the others start.

pynetdicom binds its server socket itself (``AssociationServer.server_bind``)
and offers no hook, so the server class is wrapped: an AE with a
``listen_socket`` adopts it instead of binding, closes it without shutting
it down (a shutdown would stop every process's listening), and accepts as
above.  See ``pacscore/listeners.py``.
"""

from __future__ import annotations

import socket
import time

from pynetdicom.transport import AssociationServer

# what one association being served adds to a process's wait before accepting
ACCEPT_DELAY_SECONDS = 0.005
MAX_ACCEPT_DELAY_SECONDS = 0.05
# socketserver's default backlog of 5 refuses bursts of modalities connecting at once
BACKLOG = 128

# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.transport.AssociationServer.__init__": (  # binds through server_bind
        "edacb98bdfb7b9744194698d47fa51d4e2d5c9ed02ef5fb5181f381b31118423"
    ),
    "pynetdicom.transport.AssociationServer.server_bind": (  # wrapped
        "cf69278a05a5c777b7e9e9af0769e3102618027b2ec8035a30af8cc370ebdae6"
    ),
    "pynetdicom.transport.AssociationServer.server_close": (  # wrapped
        "3fa1b358badbe6826671da5e9d11cd86944be35327c47caeeff571f74bc3cca9"
    ),
    "pynetdicom.transport.AssociationServer.get_request": (  # wrapped
        "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300"
    ),
}


def bind_dicom_socket(host: str, port: int) -> socket.socket:
    """The DICOM port, bound but not yet listening (connections are refused), ready
    to be shared with child processes; :func:`start_listening` opens it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        # as socket.create_server: a restart must not wait for the old connections'
        # TIME_WAIT, and an IPv6 address means IPv6 only
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise OSError(f"DICOM port {port} on {host} is in use: {exc.strerror}") from None
    listener.setblocking(False)
    listener.set_inheritable(True)
    return listener


def start_listening(listener: socket.socket) -> None:
    """Open the port: connections are queued for the processes' accept loops.

    Between bind and listen another program that sets SO_REUSEADDR may bind
    the same port (Linux allows it while neither socket listens); whichever
    listens second fails here.
    """
    try:
        listener.listen(BACKLOG)
    except OSError as exc:
        host, port = listener.getsockname()[:2]
        raise OSError(f"DICOM port {port} on {host} is in use: {exc.strerror}") from None


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """The DICOM port, bound and listening, ready to be shared with child processes."""
    listener = bind_dicom_socket(host, port)
    try:
        start_listening(listener)
    except OSError:
        listener.close()
        raise
    return listener


def adopt_listening_socket(fd: int) -> socket.socket:
    """In a child listener: the parent's listening socket, inherited as ``fd``."""
    listener = socket.socket(fileno=fd)
    listener.setblocking(False)
    return listener


def _serving(server: AssociationServer) -> int:
    """Associations this process is serving: the accepted sockets not yet closed."""
    accepted = [sock for sock in server._pacs_accepted if sock.fileno() != -1]
    server._pacs_accepted = accepted
    return len(accepted)


def install() -> None:
    bind, close, get_request = (
        AssociationServer.server_bind,
        AssociationServer.server_close,
        AssociationServer.get_request,
    )

    def server_bind(self) -> None:
        shared = getattr(self.ae, "listen_socket", None)
        self._pacs_accepted = []
        if shared is None:
            return bind(self)
        self.socket.close()  # the one socketserver made for us to bind
        self.socket = shared
        self.server_address = shared.getsockname()

    def server_close(self) -> None:
        if getattr(self.ae, "listen_socket", None) is None:
            return close(self)
        self.socket.close()  # this process's descriptor only: the others keep listening

    def accept_by_load(self):
        if getattr(self.ae, "listen_socket", None) is None:
            return get_request(self)
        serving = _serving(self)
        if serving:
            time.sleep(min(serving * ACCEPT_DELAY_SECONDS, MAX_ACCEPT_DELAY_SECONDS))
        client, address = get_request(self)  # BlockingIOError: another process took it
        self._pacs_accepted.append(client)
        return client, address

    AssociationServer.server_bind = server_bind
    AssociationServer.server_close = server_close
    AssociationServer.get_request = accept_by_load
    AssociationServer.request_queue_size = BACKLOG
