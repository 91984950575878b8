"""MLLP listener: persistent connections, one thread each, frames answered in order.

A frame is ``<VT> payload <FS><CR>``.  Bytes outside a frame are dropped
(logged), a frame larger than ``MAX_FRAME`` is dropped, a client that goes
away mid-frame loses only that frame, and every exception stays inside its
connection thread: the listener itself only accepts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

START, END, CR = b"\x0b", b"\x1c", b"\r"
MAX_FRAME = 8 * 1024 * 1024
MAX_CONNECTIONS = 64


def extract_frames(buffer: bytearray) -> tuple[list[bytes], int]:
    """Take the complete frames out of ``buffer``; returns (frames, bytes of garbage dropped)."""
    frames: list[bytes] = []
    dropped = 0
    while True:
        start = buffer.find(START)
        if start < 0:
            dropped += len(buffer)
            buffer.clear()
            break
        if start:
            dropped += start
            del buffer[:start]
        end = buffer.find(END, 1)
        if end < 0:
            if len(buffer) > MAX_FRAME:
                dropped += len(buffer)
                buffer.clear()
            break
        payload = bytes(buffer[1:end])
        del buffer[: end + 1]
        if buffer[:1] == CR:
            del buffer[:1]
        # a start byte inside the frame: what came before it was a broken frame
        restart = payload.rfind(START)
        if restart >= 0:
            dropped += restart + 1
            payload = payload[restart + 1 :]
        frames.append(payload)
    return frames, dropped


class _Handler(socketserver.BaseRequestHandler):
    server: MllpServer

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        sock: socket.socket = self.request
        sock.settimeout(self.server.idle_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        try:
            while not self.server.stopping.is_set():
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                frames, dropped = extract_frames(buffer)
                if dropped:
                    log.warning("MLLP %s: dropped %d byte(s) outside a frame", peer, dropped)
                for payload in frames:
                    sock.sendall(START + self.server.respond(payload, peer) + END + CR)
        except TimeoutError:
            log.info("MLLP %s: idle, closed", peer)
        except OSError as exc:
            log.info("MLLP %s: connection ended (%s)", peer, exc)
        if buffer:
            log.warning("MLLP %s: closed mid-frame, %d byte(s) dropped", peer, len(buffer))


class MllpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        respond: Callable[[bytes, str], bytes],
        idle_timeout: float = 600.0,
    ) -> None:
        self.respond_func = respond
        self.idle_timeout = idle_timeout
        self.stopping = threading.Event()
        self._active = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def respond(self, payload: bytes, peer: str) -> bytes:
        try:
            return self.respond_func(payload, peer)
        except Exception:  # the responder never raises; if it does, the connection lives on
            log.exception("MLLP %s: responder failed", peer)
            return b"MSH|^~\\&|PACSCORE||||||ACK||P|2.5\rMSA|AR||internal error\r"

    def process_request(self, request, client_address) -> None:
        if not self._active.acquire(blocking=False):
            log.warning("MLLP: too many connections, refused %s", client_address)
            self.shutdown_request(request)
            return
        with self._lock:
            self._sockets.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._sockets.discard(request)
            self._active.release()

    def handle_error(self, request, client_address) -> None:
        log.exception("MLLP %s: connection failed", client_address)

    def start(self) -> threading.Thread:
        # socketserver's default 0.5 s poll would make every stop wait that long
        thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name="pacscore-hl7", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
