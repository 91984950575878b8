"""Extra DICOM listener processes: every core accepts associations.

pynetdicom runs each association in a thread, so one process uses one core
for DICOM (the GIL).  ``pacscore serve`` therefore binds the DICOM port and
starts ``dicom_processes - 1`` child processes (``pacscore dicom-listener``)
that accept from that same socket, the least busy process taking each new
connection (``dicom/shared_listener.py``).  Each child has its own ``Pacs``
and plugin host and serves every DICOM service (C-STORE, C-FIND, C-MOVE,
C-GET); only the parent runs the HTTP server, the outbox dispatcher, the job
workers, the scheduler and the ``on_startup`` plugins, so that background
work runs once.  Children write to the shared index like any writer (the
outbox carries their events to the parent's dispatcher).

A child dies with the parent (PR_SET_PDEATHSIG), holds the home lock it
inherited (so a new server waits until no old listener is left) and is
restarted by the parent if it exits.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from pacscore.config import Config

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
RESPAWN_DELAY_SECONDS = 1.0


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

    def _spawn(self, index: int) -> None:
        config = self.config
        command = [
            sys.executable, "-m", "pacscore", "--home", str(config.home),
            "--log-level", self.log_level, "dicom-listener", "--index", str(index),
            "--aet", config.aet, "--listen-fd", str(self.listen_fd),
        ]  # fmt: skip
        env = {**os.environ, "PACSCORE_PARENT_PID": str(os.getpid())}
        fds = (self.lock_fd, self.listen_fd)
        self.children[index] = subprocess.Popen(command, pass_fds=fds, env=env)
        log.info("DICOM listener %d started (pid %d)", index, self.children[index].pid)

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)

    def watch(self) -> None:
        """Restart children that exited (after a short delay, to avoid a crash loop)."""
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


def run_listener(pacs, listen_fd: int) -> None:
    """Body of ``pacscore dicom-listener``: serve DICOM on the parent's listening
    socket (inherited as ``listen_fd``) until SIGTERM."""
    from pacscore.dicom.server import start_dicom_server
    from pacscore.dicom.shared_listener import adopt_listening_socket

    die_with_parent()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    config = pacs.config
    listener = adopt_listening_socket(listen_fd)
    server = start_dicom_server(pacs, config.host, config.dicom_port, listen_socket=listener)
    freeze_startup_objects()
    while not stop.wait(0.5):
        pacs.follow_plugin_states()
    server.shutdown()
    pacs.archive.folders.flush()
