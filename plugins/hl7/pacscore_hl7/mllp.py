"""MLLP listener: persistent connections, one thread each, frames answered in order.

A frame is ``<VT> payload <FS><CR>``.  Bytes outside a frame are dropped
(logged), a client that goes away mid-frame loses only that frame, and every
exception stays inside its connection thread: the listener itself only
accepts.

Memory is bounded: a connection holds at most ``max_frame`` bytes of the
frame being read.  A larger frame keeps only its first ``HEAD_KEPT`` bytes
(for the control ID of its AR) and the rest is read and thrown away as it
comes; the connection goes on with the next frame.  After a large frame the
freed memory is handed back to the system (``malloc_trim``): glibc keeps
freed blocks of each thread's arena, and a burst of big frames left the
server 200 MB larger for good.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

START, END, CR = b"\x0b", b"\x1c", b"\r"
MAX_FRAME = 1024 * 1024  # default of the max_message_bytes setting
MAX_CONNECTIONS = 64
HEAD_KEPT = 8192  # bytes kept of a frame larger than the limit: its MSH, PID...
RECV_SIZE = 65536
LARGE = 256 * 1024  # a frame this large is followed by a malloc_trim


@dataclass
class Frame:
    """A frame's payload, or only its first bytes when it was larger than the limit."""

    payload: bytes
    size: int  # of the whole frame

    @property
    def too_large(self) -> bool:
        return self.size > len(self.payload)


class FrameReader:
    """Cuts the frames out of a byte stream, holding at most ``limit`` bytes of one.

    A start byte inside a frame ends the broken frame before it.  Each byte
    is looked at once (a slow drip costs no rescans).
    """

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self.in_frame = False
        self.kept = bytearray()  # the current frame's bytes, at most ``limit``
        self.size = 0  # of the current frame, including what was not kept
        self.dropped = 0  # bytes outside frames (or of broken frames) not yet reported
        self._after_end = False  # the CR that follows an end byte is no garbage

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame."""
        return self.size if self.in_frame else 0

    def feed(self, data: bytes) -> list[Frame]:
        """The frames that ``data`` completes; the unfinished one is kept for the next call."""
        frames: list[Frame] = []
        pos, length = 0, len(data)
        if self._after_end and data[:1] == CR:
            pos = 1
        self._after_end = False
        while pos < length:
            start = data.find(START, pos)
            if not self.in_frame:
                if start < 0:
                    self.dropped += length - pos
                    break
                self.dropped += start - pos
                self.in_frame, pos = True, start + 1
                continue
            end = data.find(END, pos, length if start < 0 else start)
            if end < 0 and start < 0:  # the frame goes on in the next chunk
                self._keep(data, pos, length)
                break
            if end < 0:  # another frame starts: this one was broken (its start byte too)
                self.dropped += 1 + self.size + start - pos
                self._reset()
                self.in_frame, pos = True, start + 1
                continue
            self._keep(data, pos, end)
            frames.append(Frame(bytes(self.kept), self.size))
            self._reset()
            pos = end + 1
            if pos == length:
                self._after_end = True
            elif data[pos : pos + 1] == CR:
                pos += 1
        return frames

    def _keep(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.size <= self.limit:
            self.kept += data[start:end]
            return
        head = min(HEAD_KEPT, self.limit)  # too large: only the head is kept
        if len(self.kept) < head:
            self.kept += data[start : min(end, start + head - len(self.kept))]
        elif len(self.kept) > head:
            del self.kept[head:]  # frees the rest now

    def _reset(self) -> None:
        self.in_frame = False
        self.kept = bytearray()
        self.size = 0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_malloc_trim()
_trim_lock = threading.Lock()


def release_memory() -> None:
    """Hand the free memory of every malloc arena back to the system."""
    if _malloc_trim is not None:
        with _trim_lock:
            _malloc_trim(0)


def _refuse(head: bytes, size: int, peer: str) -> bytes:
    log.warning("MLLP %s: frame of %d bytes refused (too large)", peer, size)
    return b"MSH|^~\\&|PACSCORE||||||ACK||P|2.5\rMSA|AR||message too large\r"


class _Handler(socketserver.BaseRequestHandler):
    server: MllpServer

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        sock: socket.socket = self.request
        sock.settimeout(self.server.idle_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = FrameReader(self.server.max_frame)
        try:
            while not self.server.stopping.is_set():
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    break
                frames = reader.feed(chunk)
                if reader.dropped:
                    log.warning("MLLP %s: dropped %d byte(s) outside a frame", peer, reader.dropped)
                    reader.dropped = 0
                if frames and self._answer(sock, frames, peer):
                    release_memory()
        except TimeoutError:
            log.info("MLLP %s: idle, closed", peer)
        except OSError as exc:
            log.info("MLLP %s: connection ended (%s)", peer, exc)
        pending = reader.pending
        del reader  # its unfinished frame, freed before the trim
        if pending:
            log.warning("MLLP %s: closed mid-frame, %d byte(s) dropped", peer, pending)
        if pending >= LARGE:
            release_memory()

    def _answer(self, sock: socket.socket, frames: list[Frame], peer: str) -> bool:
        """Send each frame's ACK in order; True if one was large (memory to give back)."""
        large = any(frame.size >= LARGE for frame in frames)
        while frames:
            frame = frames.pop(0)
            sock.sendall(START + self.server.respond(frame, peer) + END + CR)
        return large


class MllpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        respond: Callable[[bytes, str], bytes],
        idle_timeout: float = 600.0,
        max_frame: int = MAX_FRAME,
        refuse: Callable[[bytes, int, str], bytes] | None = None,
    ) -> None:
        """``respond(payload, peer)`` answers a frame; ``refuse(head, size, peer)`` one
        larger than ``max_frame`` bytes, of which only ``head`` was kept."""
        self.respond_func = respond
        self.refuse_func = refuse or _refuse
        self.idle_timeout = idle_timeout
        self.max_frame = max_frame
        self.stopping = threading.Event()
        self._active = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def respond(self, frame: Frame, peer: str) -> bytes:
        try:
            if frame.too_large:
                return self.refuse_func(frame.payload, frame.size, peer)
            return self.respond_func(frame.payload, peer)
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
