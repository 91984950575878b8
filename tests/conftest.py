"""Shared fixtures: a database per test (SQLite and PostgreSQL), a pacscore
home, a real ``pacscore serve`` subprocess on free ports, DCMTK peers."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest

# Debian's DCMTK: pynetdicom installs console scripts with the same names in the venv
DCMTK_DIR = "/usr/bin"
PG_ADMIN_URL = os.environ.get("PACSCORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    path = shutil.which(tool, path=DCMTK_DIR)
    if path is None:
        pytest.fail(f"DCMTK's {tool} is missing: run the README's test command (it installs dcmtk)")
    return path


def run_dcmtk(tool: str, *args: str, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run(
        [dcmtk(tool), *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=DCMTK_ENV,
        cwd=cwd,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


# -- the command line ----------------------------------------------------------------


def run_cli(
    args: list[str], env: dict | None = None, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m pacscore ARGS``, with its exit status, stdout and stderr.

    Python's start-up and imports cost about half a second per command, so
    the command runs in a fork of this process when that is the same thing:
    no other thread here (a fork copies only this one, and any lock another
    holds) and the same PYTHONPATH (which decides the installed plugins).
    """
    command = [sys.executable, "-m", "pacscore", *args]
    env = dict(os.environ if env is None else env)
    if threading.active_count() > 1 or env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            input=input,
            env=env,
            timeout=timeout,
        )
    stdin, stdout, stderr = (tempfile.TemporaryFile() for _ in range(3))  # noqa: SIM115
    with stdin, stdout, stderr:
        stdin.write((input or "").encode())
        stdin.seek(0)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _run_cli_in_child(args, env, stdin, stdout, stderr)
        status = _wait_for(pid, timeout, args)
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(
            command,
            status,
            stdout.read().decode(errors="replace"),
            stderr.read().decode(errors="replace"),
        )


def _run_cli_in_child(args: list[str], env: dict, stdin, stdout, stderr) -> None:
    """What ``python -m pacscore`` does (``sys.exit(main())``), then ``os._exit``."""
    from pacscore import cli

    code = 1
    try:
        for fd, file in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(file.fileno(), fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child exits with os._exit
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        # a fresh interpreter's logging: pytest's capture handlers would swallow the messages
        logging.root.handlers.clear()
        logging.root.setLevel(logging.WARNING)
        logging.disable(logging.NOTSET)
        code = cli.main(args)
    except SystemExit as exc:  # argparse: --help, usage errors
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, status 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait_for(pid: int, timeout: float, args: list[str]) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(["pacscore", *args], timeout)
        time.sleep(0.005)


# -- databases -------------------------------------------------------------------


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """Every test using a database runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield "sqlite:///index.db"
        return
    name = f"pacscore_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a pacscore installation driven through its CLI ------------------------------------


class PacsProcess:
    """A pacscore home, its CLI, and a ``pacscore serve`` subprocess."""

    def __init__(self, home: Path, db_url: str, aet: str = "PACSCORE") -> None:
        self.home = home
        self.db_url = db_url
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.hl7_port = free_port()
        self.process: subprocess.Popen | None = None
        self.env = dict(os.environ)
        self.log_path = home.parent / f"{home.name}-serve.log"

    def cli(self, *args: str, check: bool = True, input: str | None = None, env=None):
        result = run_cli(["--home", str(self.home), *args], env=env or self.env, input=input)
        if check and result.returncode != 0:
            raise AssertionError(
                f"pacscore {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def init(self) -> PacsProcess:
        self.cli("init", "--db", self.db_url, "--aet", self.aet)
        return self

    def start(self, extra_env: dict | None = None, args: tuple[str, ...] = ()) -> PacsProcess:
        env = {**self.env, **(extra_env or {})}
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacscore",
                "--home",
                str(self.home),
                "serve",
                "--host",
                "127.0.0.1",
                "--dicom-port",
                str(self.dicom_port),
                "--http-port",
                str(self.http_port),
                "--hl7-port",
                str(self.hl7_port),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        wait_for_port(self.dicom_port, process=self.process)
        wait_for_port(self.http_port, process=self.process)
        return self

    def stop(self) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # conveniences for DCMTK peers
    def storescu(self, *files: Path | str, aet: str = "STORESCU", extra: tuple = ()):
        return run_dcmtk(
            "storescu", "-aet", aet, "-aec", self.aet, *extra, "127.0.0.1",
            str(self.dicom_port), *[str(f) for f in files]
        )  # fmt: skip

    def move_study(self, study_uids: str, destination: str, aet: str, extra: tuple = ()):
        """DCMTK movescu: Study Root C-MOVE of ``study_uids`` (backslash-separated)."""
        return run_dcmtk(
            "movescu", "-aet", aet, "-aec", self.aet, "-aem", destination, "-S", *extra,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uids}",
            "127.0.0.1", str(self.dicom_port),
        )  # fmt: skip

    def findscu(self, *keys: str, aet: str = "FINDSCU", root: str = "-S", extra: tuple = ()):
        args = [root, "-aet", aet, "-aec", self.aet, *extra]
        for key in keys:
            args += ["-k", key]
        return run_dcmtk("findscu", *args, "127.0.0.1", str(self.dicom_port))


@pytest.fixture
def pacs_home(tmp_path, db_url):
    """An initialised pacscore home (not running), on each database."""
    pacs = PacsProcess(tmp_path / "home", db_url).init()
    yield pacs
    pacs.stop()


@pytest.fixture
def server(pacs_home):
    """A running ``pacscore serve`` on free 127.0.0.1 ports."""
    yield pacs_home.start()
    pacs_home.stop()


# -- in-process applications ----------------------------------------------------------


def new_pacs(home: Path, db_url: str, *plugins: object):
    """A Pacs as ``open_pacs`` builds it (failures persisted), with test plugins."""
    from pacscore.app import Pacs
    from pacscore.config import Config

    config = Config(home=home, db_url=db_url)
    if not config.path.exists():
        home.mkdir(parents=True, exist_ok=True)
        config.save()
    pacs = Pacs(Config.load(home))
    pacs.prepare()
    pacs.hooks.load_builtins()
    for plugin in plugins:
        pacs.hooks.register(plugin, name=type(plugin).__name__.lower())
    pacs.prepare_plugin_tables()  # as load_plugins does
    return pacs


@pytest.fixture
def make_pacs(tmp_path, db_url):
    """Build Pacs objects on one home and database; close their pools afterwards."""
    built = []

    def make(*plugins: object):
        pacs = new_pacs(tmp_path / "home", db_url, *plugins)
        built.append(pacs)
        return pacs

    yield make
    for pacs in built:
        pacs.database.close_all()


# -- test data ----------------------------------------------------------------------


def pydicom_test_files() -> list[Path]:
    """The test files pydicom ships (get_testdata_files would try to download more)."""
    import pydicom.data

    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def pynetdicom_test_files() -> list[Path]:
    import pynetdicom

    folder = Path(pynetdicom.__file__).parent / "tests" / "dicom_files"
    return sorted(folder.glob("*.dcm"))
