"""``pacscore serve``: the listeners and background threads of a server.

Processes: this one, plus ``dicom_processes - 1`` extra DICOM listeners on
the same port (see ``pacscore/listeners.py``).  The DICOM port opens last,
once every process can take associations (the start gate).  Threads of this
process: the DICOM accept loop plus one thread per association (pynetdicom),
the HTTP server (waitress, its own worker threads), the outbox dispatcher,
the job workers (one thread per unit of concurrency of each job kind), the
scheduler, and whatever plugins start in ``on_startup``.
"""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
import time
from pathlib import Path

from waitress.server import create_server

from pacscore.db import connection
from pacscore.dicom.pynetdicom_ext import require_tested_pynetdicom
from pacscore.dicom.pynetdicom_ext.shared_listener import bind_dicom_socket, start_listening
from pacscore.dicom.scp import make_dicom_server, start_accepting
from pacscore.jobs import JobWorkers
from pacscore.listeners import (
    ACCEPTING,
    ACCEPTING_TIMEOUT_SECONDS,
    READY,
    READY_TIMEOUT_SECONDS,
    ListenerProcesses,
    dicom_process_count,
    freeze_startup_objects,
    warm_up,
)
from pacscore.outbox import Dispatcher
from pacscore.scheduler import Scheduler
from pacscore.web import create_app

log = logging.getLogger(__name__)


def start_http_server(pacs, host: str, port: int):
    server = create_server(create_app(pacs), host=host, port=port, threads=8, ident="pacscore")
    threading.Thread(target=server.run, name="pacscore-http", daemon=True).start()
    log.info("HTTP listening on %s:%d", host, port)
    return server


class AlreadyServing(RuntimeError):
    pass


def lock_home(home: Path, wait_seconds: float = 5.0):
    """Hold an exclusive lock on the home for the server's lifetime.

    Child listeners inherit it, so it is free only when every process of an
    earlier server is gone; a moment is allowed for those of a killed server
    to exit.
    """
    handle = open(home / "serve.lock", "w")  # noqa: SIM115 - held until exit
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise AlreadyServing(f"another 'pacscore serve' is running on {home}") from None
            time.sleep(0.1)


def serve(pacs, log_level: str = "INFO") -> None:
    config = pacs.config
    # an untested pynetdicom is refused before anything starts (UnsupportedPynetdicom)
    require_tested_pynetdicom()
    home_lock = lock_home(config.home)
    pacs.recover()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    processes = dicom_process_count(config)
    # bound now (a port in use fails at once) but refusing connections until every
    # process can take them (the start gate, pacscore/listeners.py)
    dicom_socket = bind_dicom_socket(config.host, config.dicom_port)
    listeners = ListenerProcesses(
        config, processes, home_lock.fileno(), dicom_socket.fileno(), log_level
    )
    listeners.start()
    dicom = make_dicom_server(pacs, config.host, config.dicom_port, listen_socket=dicom_socket)
    warm_up(pacs)
    http = start_http_server(pacs, config.host, config.http_port)
    dispatcher = Dispatcher(pacs)
    dispatcher.start()
    with connection():
        # jobs a crashed process of this host left running (other servers' are leased)
        pacs.jobs.requeue_orphans()
        workers = JobWorkers(pacs)
        workers.start()
    scheduler = Scheduler(pacs)
    with connection():
        scheduler.collect()
    scheduler.start()
    with connection():
        pacs.hooks.relay.on_startup(pacs=pacs)
    accepting = open_dicom_port(dicom, dicom_socket, listeners, stop)
    if accepting:
        log.info("pacscore ready (%d DICOM listener processes)", processes)
    freeze_startup_objects()

    while not stop.wait(0.5):
        listeners.watch()
        pacs.follow_plugin_states()
    log.info("stopping")
    with connection():
        pacs.hooks.relay.on_shutdown(pacs=pacs)
    listeners.stop()
    if accepting:
        dicom.shutdown()
    else:
        dicom.server_close()
    pacs.archive.folders.flush()
    http.close()
    scheduler.stop()
    workers.stop()
    dispatcher.stop()
    dispatcher.join(timeout=10)
    home_lock.close()
    log.info("stopped")


def open_dicom_port(dicom, dicom_socket, listeners: ListenerProcesses, stop) -> bool:
    """Once every child listener is ready (or late), listen, let the children accept,
    then accept here too: the first association finds every process taking its
    share.  False if ``stop`` came first."""
    listeners.wait_until(READY, READY_TIMEOUT_SECONDS, stop)
    if stop.is_set():
        return False
    start_listening(dicom_socket)
    listeners.open_gate()
    listeners.wait_until(ACCEPTING, ACCEPTING_TIMEOUT_SECONDS, stop)
    start_accepting(dicom)
    return True
