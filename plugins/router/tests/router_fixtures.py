"""Shared pieces of the router tests: an in-process pacscore with the router,
its dispatcher, job workers and (when asked) its DICOM listener, and DCMTK
``storescp`` destinations started and stopped by the tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pacscore_router
import pytest
from pacscore_router.models import RouterDelivery

from pacscore.db import connection
from pacscore.dicom.scp import start_dicom_server
from pacscore.jobs import JobWorkers
from pacscore.models import Job, Node
from pacscore.outbox import Dispatcher
from tests.conftest import DCMTK_ENV, dcmtk, free_port, new_pacs, wait_for_port
from tests.dicomgen import make_instance

DEST_AET = "DEST"


def wait_until(condition, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class StoreSCP:
    """DCMTK storescp writing what it receives, bit for bit (+B), one file per C-STORE."""

    def __init__(self, folder: Path, aet: str = DEST_AET, extra: tuple = ()) -> None:
        self.folder = folder
        self.aet = aet
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> StoreSCP:
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", self.aet, "+B", "+uf", "-od", str(self.folder),
             *self.extra, str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@pytest.fixture
def storescp(tmp_path):
    started = []

    def start(name: str = "dest", **kwargs) -> StoreSCP:
        scp = StoreSCP(tmp_path / name, **kwargs).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


class RouterPacs:
    """An in-process pacscore with the router plugin and its background threads."""

    def __init__(self, home: Path, db_url: str, aet: str = "PACSCORE") -> None:
        self.pacs = new_pacs(home, db_url)
        self.pacs.config.aet = aet
        self.pacs.hooks.register(pacscore_router, name="router")
        self.pacs.prepare_plugin_tables()
        with connection():
            self.pacs.settings.update_core({"study_stable_seconds": 1})
        self.dispatcher: Dispatcher | None = None
        self.workers: JobWorkers | None = None
        self.dicom = None

    def start(self, dicom: bool = False) -> RouterPacs:
        if dicom:
            self.pacs.config.dicom_port = free_port()
            self.dicom = start_dicom_server(self.pacs, "127.0.0.1", self.pacs.config.dicom_port)
        self.dispatcher = Dispatcher(self.pacs)
        self.dispatcher.start()
        self.workers = JobWorkers(self.pacs, poll_seconds=0.2)
        with connection():
            self.workers.start()
        return self

    def stop(self) -> None:
        if self.workers:
            self.workers.stop()
        if self.dispatcher:
            self.dispatcher.stop()
            self.dispatcher.join(10)
        if self.dicom:
            self.dicom.shutdown()
        self.pacs.database.close_all()

    def add_node(self, name: str, aet: str, port: int, **fields) -> None:
        with connection():
            Node.create(name=name, aet=aet, host="127.0.0.1", port=port, **fields)
        self.pacs.nodes.invalidate()

    def configure(self, **settings) -> dict:
        with connection():
            return self.pacs.save_plugin_settings("router", settings)

    def store(self, path: Path, calling_ae: str = "MODALITY") -> None:
        from pacscore.dicomfile.part10 import read_dicom_file

        data, ts = read_dicom_file(path)
        with connection():
            result = self.pacs.archive.store(data, ts, calling_ae, self.pacs.config.aet)
        assert result.ok and not result.duplicate, result

    def jobs(self, kind: str = "router.send") -> list[Job]:
        return [job for job in self.pacs.jobs.list() if job.kind == kind]

    def deliveries(self, state: str | None = None) -> list[RouterDelivery]:
        with connection():
            query = RouterDelivery.select().order_by(RouterDelivery.id)
            if state:
                query = query.where(RouterDelivery.state == state)
            return list(query)

    def idle(self) -> bool:
        """No outbox event, unstable study or due job left."""
        from pacscore.db import utcnow
        from pacscore.models import OutboxEvent, Study

        with connection():
            return (
                not OutboxEvent.select().exists()
                and not Study.select().where(~Study.stable).exists()
                and not Job.select()
                .where(
                    Job.state.in_(["running"])
                    | ((Job.state == "pending") & (Job.next_attempt <= utcnow()))
                )
                .exists()
            )


@pytest.fixture
def router_pacs(tmp_path):
    """``router_pacs(db_url="sqlite:///index.db", name="home")`` builds and starts one."""
    built = []

    def build(db_url: str = "sqlite:///index.db", name: str = "home", **kwargs) -> RouterPacs:
        pacs = RouterPacs(tmp_path / name, db_url, **kwargs)
        built.append(pacs)
        return pacs

    yield build
    for pacs in built:
        pacs.stop()


def make_study(folder: Path, count: int = 2, **attributes) -> list[Path]:
    """``count`` instances of one new study (one series)."""
    from pydicom.uid import generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        make_instance(
            folder, study_uid=study_uid, series_uid=series_uid, instance_number=n + 1, **attributes
        )
        for n in range(count)
    ]
