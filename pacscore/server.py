"""``pacscore serve``: every listener and background thread in one process.

Threads: the DICOM accept loop plus one thread per association (pynetdicom),
the HTTP server (waitress, its own worker threads), the outbox dispatcher,
the job workers (one thread per unit of concurrency of each job kind), the
scheduler, and whatever plugins start in ``on_startup``.
"""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
from pathlib import Path

from waitress.server import create_server

from pacscore.dicom.server import start_dicom_server
from pacscore.jobs import JobWorkers
from pacscore.models import connection
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


def lock_home(home: Path):
    """Hold an exclusive lock on the home for the server's lifetime."""
    handle = open(home / "serve.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyServing(f"another 'pacscore serve' is running on {home}") from None
    return handle


def serve(pacs) -> None:
    config = pacs.config
    home_lock = lock_home(config.home)
    pacs.recover()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    dicom = start_dicom_server(pacs, config.host, config.dicom_port)
    http = start_http_server(pacs, config.host, config.http_port)
    dispatcher = Dispatcher(pacs)
    dispatcher.start()
    with connection():
        # only one server runs on a home: a running job belongs to a dead process
        pacs.jobs.requeue_running()
        workers = JobWorkers(pacs)
        workers.start()
    scheduler = Scheduler(pacs)
    with connection():
        scheduler.collect()
    scheduler.start()
    with connection():
        pacs.hooks.call_each("on_startup", pacs=pacs)
    log.info("pacscore ready")

    stop.wait()
    log.info("stopping")
    with connection():
        pacs.hooks.call_each("on_shutdown", pacs=pacs)
    dicom.shutdown()
    http.close()
    scheduler.stop()
    workers.stop()
    dispatcher.stop()
    dispatcher.join(timeout=10)
    home_lock.close()
    log.info("stopped")
