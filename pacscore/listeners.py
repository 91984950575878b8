"""Extra DICOM listener processes: every core accepts associations.

pynetdicom runs each association in a thread, so one process uses one core
for DICOM (the GIL).  ``pacscore serve`` therefore binds the DICOM port and
starts ``dicom_processes - 1`` child processes (``pacscore dicom-listener``)
that accept from that same socket, the least busy process taking each new
connection (``dicom/pynetdicom_ext/shared_listener.py``).  Each child has its own ``Pacs``
and plugin host and serves every DICOM service (C-STORE, C-FIND, C-MOVE,
C-GET); only the parent runs the HTTP server, the outbox dispatcher, the job
workers, the scheduler and the ``on_startup`` plugins, so that background
work runs once.  Children write to the shared index like any writer (the
outbox carries their events to the parent's dispatcher).

A child dies with the parent (PR_SET_PDEATHSIG), holds the home lock it
inherited (so a new server waits until no old listener is left) and is
restarted by the parent if it exits.

The start gate: the port is bound before the children start but listens
only once every process can take associations at full speed.  Otherwise the
parent accepted every association of the first second or two alone (and kept
them to their end) while the children's imports took the other core: 0.6-0.7x
Orthanc's rate for a backlog pushed the moment the port answered.  Each child
builds its server, warms up and writes ``r`` on its ready pipe; the parent
does its own start-up meanwhile, waits for every ``r`` (at most
``READY_TIMEOUT_SECONDS``: a late child is logged and joins when ready), then
listens and closes the go pipe; each child, seeing its end of file, starts
accepting and writes ``a``; the parent starts its own accept loop once every
child has.  A restarted child finds the go pipe closed and accepts as soon as
it is ready; the others accept all along.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

from pacscore.config import Config

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
RESPAWN_DELAY_SECONDS = 1.0
# how long the port stays closed waiting for a child to be ready (imports, warm-up:
# about a second), then for the ready children to accept (a thread start each)
READY_TIMEOUT_SECONDS = 30.0
ACCEPTING_TIMEOUT_SECONDS = 5.0
# a child's pipes, inherited: it writes READY then ACCEPTING on the first; the parent
# closes the second's write end when the port listens
READY_FD_ENV, GO_FD_ENV = "PACSCORE_READY_FD", "PACSCORE_GO_FD"
READY, ACCEPTING = b"r", b"a"


def dicom_process_count(config: Config) -> int:
    """``config.dicom_processes``, or one per core when it is 0."""
    return config.dicom_processes or os.cpu_count() or 1


class ListenerProcesses:
    """The parent's view of its child listeners; call every method from the main thread
    (PR_SET_PDEATHSIG follows the thread that started a child)."""

    def __init__(
        self, config: Config, count: int, lock_fd: int, listen_fd: int, log_level: str
    ) -> None:
        self.config = config
        self.count = count
        self.lock_fd = lock_fd
        self.listen_fd = listen_fd
        self.log_level = log_level
        self.children: dict[int, subprocess.Popen] = {}
        self._died_at: dict[int, float] = {}
        # index -> (read end of its ready pipe, what it said so far): until it accepts
        self._reports: dict[int, tuple[int, bytes]] = {}
        self._go_read, self._go_write = os.pipe()  # end of file: the port listens

    def _spawn(self, index: int) -> None:
        config = self.config
        command = [
            sys.executable, "-m", "pacscore", "--home", str(config.home),
            "--log-level", self.log_level, "dicom-listener", "--index", str(index),
            "--aet", config.aet, "--listen-fd", str(self.listen_fd),
        ]  # fmt: skip
        report_read, report_write = os.pipe()
        env = {
            **os.environ,
            "PACSCORE_PARENT_PID": str(os.getpid()),
            READY_FD_ENV: str(report_write),
            GO_FD_ENV: str(self._go_read),
        }
        fds = (self.lock_fd, self.listen_fd, report_write, self._go_read)
        try:
            self.children[index] = subprocess.Popen(command, pass_fds=fds, env=env)
        except BaseException:
            os.close(report_read)
            raise
        finally:
            os.close(report_write)  # the child's now: end of file when it exits
        self._forget(index)  # a dead predecessor's pipe
        self._reports[index] = (report_read, b"")
        log.info("DICOM listener %d started (pid %d)", index, self.children[index].pid)

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)

    def wait_until(self, report: bytes, timeout: float, stop: threading.Event) -> None:
        """Wait until every child has said ``report`` (READY, or ACCEPTING: those that
        are ready) or exited, ``timeout`` seconds at most (then log the late ones), or
        ``stop`` is set."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            late = [
                index
                for index, (_, said) in self._reports.items()
                if report not in said and (report == READY or READY in said)
            ]
            if not late:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                for index in late:
                    log.warning(
                        "DICOM listener %d (pid %d) not %s after %.0f s: the port opens "
                        "without it, it joins when ready", index, self.children[index].pid,
                        "ready" if report == READY else "accepting", timeout,
                    )  # fmt: skip
                return
            self._read_reports(min(left, 0.2))

    def _read_reports(self, timeout: float) -> None:
        """Read what the children wrote on their ready pipes, waiting ``timeout`` at most."""
        by_fd = {fd: index for index, (fd, _) in self._reports.items()}
        if not by_fd:
            return
        readable, _, _ = select.select(list(by_fd), [], [], timeout)
        for fd in readable:
            index = by_fd[fd]
            pid = self.children[index].pid
            message = os.read(fd, 16)
            said = self._reports[index][1] + message
            self._reports[index] = (fd, said)
            if READY in message:
                log.info("DICOM listener %d ready (pid %d)", index, pid)
            if ACCEPTING in message:
                log.info("DICOM listener %d accepting (pid %d)", index, pid)
            if not message:
                if ACCEPTING not in said:
                    log.warning("DICOM listener %d (pid %d) exited before accepting", index, pid)
                self._forget(index)

    def _forget(self, index: int) -> None:
        fd, _ = self._reports.pop(index, (-1, b""))
        if fd != -1:
            os.close(fd)

    def open_gate(self) -> None:
        """The port listens: the children waiting for it start accepting, and later
        (restarted) ones as soon as they are ready."""
        if self._go_write != -1:
            os.close(self._go_write)
            self._go_write = -1

    def watch(self) -> None:
        """Log the children's readiness; restart children that exited (after a short
        delay, to avoid a crash loop)."""
        self._read_reports(0)
        now = time.monotonic()
        for index, child in list(self.children.items()):
            if child.poll() is None:
                continue
            died = self._died_at.setdefault(index, now)
            if now - died >= RESPAWN_DELAY_SECONDS:
                log.error("DICOM listener %d exited with %s: restarting", index, child.returncode)
                del self._died_at[index]
                self._spawn(index)

    def stop(self, timeout: float = 15) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for index in list(self._reports):
            self._forget(index)
        self.open_gate()
        os.close(self._go_read)


def die_with_parent() -> None:
    """In a child: be killed when the parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = int(os.environ.get("PACSCORE_PARENT_PID", "0"))
    if parent and os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def freeze_startup_objects() -> None:
    """Leave what start-up created out of every later garbage collection.

    Modules, the plugin manager, the Flask app and pynetdicom's tables live
    as long as the process; without this each full collection scans them all
    again (tens of ms with the GIL held, stalling every association).
    """
    gc.freeze()


class StartGate:
    """A child's side of the start gate (see the module docstring); does nothing in a
    process that ``pacscore serve`` did not start."""

    def __init__(self) -> None:
        self.report_fd = int(os.environ.pop(READY_FD_ENV, "-1"))
        self.go_fd = int(os.environ.pop(GO_FD_ENV, "-1"))

    def _say(self, what: bytes) -> None:
        if self.report_fd != -1:
            # OSError: the parent is gone, and PR_SET_PDEATHSIG ends this process
            with contextlib.suppress(OSError):
                os.write(self.report_fd, what)

    def ready(self) -> None:
        self._say(READY)

    def wait_open(self, stop: threading.Event) -> bool:
        """Until the parent's port listens (True), or ``stop`` is set (False)."""
        while self.go_fd != -1 and not stop.is_set():
            if select.select([self.go_fd], [], [], 0.2)[0]:  # end of file
                os.close(self.go_fd)
                self.go_fd = -1
        return not stop.is_set()

    def accepting(self) -> None:
        self._say(ACCEPTING)
        if self.report_fd != -1:
            os.close(self.report_fd)
            self.report_fd = -1


def warm_up(pacs) -> None:
    """Pay before the port opens what a fresh process's first C-STORE would: a
    pooled database connection, the core settings, the store path's first
    statement and ``event_wanted`` (a first store took 2-4 ms more than the
    next ones).  Read-only; a failure (the database not reachable yet) is only
    logged, the first store will tell."""
    from pacscore import sql
    from pacscore.db import connection
    from pacscore.models import Instance

    try:
        with connection():
            _ = pacs.settings.core
            sql.select_value(Instance, "id", "sop_uid", "")
            pacs.hooks.wanted("on_store", pacs)
    except Exception:  # noqa: BLE001 - only a warm-up
        log.warning("warm-up before accepting associations failed", exc_info=True)


def run_listener(pacs, listen_fd: int) -> None:
    """Body of ``pacscore dicom-listener``: serve DICOM on the parent's listening
    socket (inherited as ``listen_fd``) until SIGTERM, from when the parent opens
    the port (the start gate)."""
    from pacscore.dicom.pynetdicom_ext.shared_listener import adopt_listening_socket
    from pacscore.dicom.scp import make_dicom_server, start_accepting

    die_with_parent()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    config = pacs.config
    gate = StartGate()
    listener = adopt_listening_socket(listen_fd)
    server = make_dicom_server(pacs, config.host, config.dicom_port, listen_socket=listener)
    warm_up(pacs)
    gate.ready()
    if not gate.wait_open(stop):
        server.server_close()
        return
    start_accepting(server)
    gate.accepting()
    freeze_startup_objects()
    while not stop.wait(0.5):
        pacs.follow_plugin_states()
    server.shutdown()
    pacs.archive.folders.flush()
