"""Helpers for testing a plugin against a real pacscore, in the test's process.

A plugin's tests import these instead of pacscore's own ``tests/`` (which is
not installed)::

    import pacscore_hello
    from pacscore.testing import deliver_events, make_dataset, make_pacs, store

    def test_each_stored_instance_is_logged(tmp_path):
        pacs = make_pacs(tmp_path, plugins=[pacscore_hello])
        pacs.save_plugin_settings("hello", {"log_file": str(tmp_path / "hello.log")})
        instance = store(pacs, make_dataset(PatientID="PAT1"))
        deliver_events(pacs)
        assert (tmp_path / "hello.log").read_text() == f"{instance.sop_uid} PAT1 CT\\n"

Everything is the real code: the database (SQLite in the test's folder, or
the URL given), the store pipeline, the plugin host and its isolation, the
console with its login, rights and CSRF checks.  What the helpers skip is
only what a server adds around it: the listeners and the background threads
(dispatcher, job workers, scheduler), whose work :func:`deliver_events`,
:func:`fire_stable_studies` and :func:`run_jobs` do in the caller's thread.

The database is the process's one (``pacscore.db.db``): the last Pacs built
is the one queries go to.  Close a Pacs's connections with
``pacs.database.close_all()`` when the test ends (needed before dropping a
PostgreSQL database).
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacscore.app import Pacs
from pacscore.archive import StoredInstance, StoreResult
from pacscore.config import Config
from pacscore.db import connection, utcnow, write_transaction
from pacscore.dicomfile.part10 import PREAMBLE, load_dataset_bytes, read_part10
from pacscore.jobs import worker_name
from pacscore.models import Profile, Study, User
from pacscore.users import ADMIN_PROFILE, hash_password

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

__all__ = [
    "ConsoleClient",
    "StoreFailed",
    "console_client",
    "deliver_events",
    "fire_stable_studies",
    "make_dataset",
    "make_pacs",
    "plugin_name",
    "run_jobs",
    "store",
]

DEFAULT_DB_URL = "sqlite:///index.db"  # a file in the home, so in the test's folder
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- the application --------------------------------------------------------------------------


def plugin_name(plugin: object) -> str:
    """The name a plugin object is registered under when none is given.

    A module is named like the bundled plugins' entry points: ``pacscore_hello``
    is ``hello`` (its last dotted part, without a ``pacscore_`` prefix); any
    other object by its class name in lower case.
    """
    module_name = getattr(plugin, "__name__", None)
    if isinstance(module_name, str) and hasattr(plugin, "__file__"):
        return module_name.rsplit(".", 1)[-1].removeprefix("pacscore_")
    return type(plugin).__name__.lower()


def _named(plugins: Mapping[str, object] | Iterable[object]) -> list[tuple[str, object]]:
    if isinstance(plugins, Mapping):
        return list(plugins.items())
    return [(plugin_name(plugin), plugin) for plugin in plugins]


def make_pacs(
    tmp_path: Path,
    plugins: Mapping[str, object] | Iterable[object] = (),
    db_url: str | None = None,
    *,
    builtins: bool = False,
) -> Pacs:
    """A :class:`pacscore.app.Pacs` on a new home in ``tmp_path``, with only ``plugins``.

    ``plugins``: plugin objects or modules (named by :func:`plugin_name`: give
    the name your code passes to ``pacs.plugin_settings``), or a mapping
    ``{name: plugin}``.  They are registered on the Pacs's own plugin host,
    and their tables (hook ``database_models``) are created, as at start-up;
    no installed plugin is loaded.  ``builtins=True`` also registers the
    core's built-in plugins first, as a server does (the ``mail`` and
    ``send_study`` job handlers, the store policies...).

    ``db_url``: the database (a PostgreSQL URL, an empty database); by default
    a SQLite file in the home.  A second call on the same ``tmp_path`` opens
    the same home and database.  Raises ``RuntimeError`` when a plugin's
    tables cannot be prepared (the failure the server would record).
    """
    home = Path(tmp_path) / "pacscore-home"
    if not (home / "pacscore.toml").exists():
        Config(home=home, db_url=db_url or DEFAULT_DB_URL).save()
    config = Config.load(home)
    if db_url:
        config.db_url = db_url
    pacs = Pacs(config)
    pacs.prepare()  # the core's tables, the default profiles and storage folder
    if builtins:
        pacs.hooks.load_builtins()
    named = _named(plugins)
    for name, plugin in named:
        pacs.hooks.register(plugin, name=name)
    pacs.prepare_plugin_tables()  # as Pacs.load_plugins does at start-up
    dropped = [name for name, _ in named if pacs.hooks.pm.get_plugin(name) is None]
    if dropped:
        failures = [f"{f.plugin}.{f.hook}: {f.error}" for f in pacs.hooks.failures]
        raise RuntimeError(f"plugin(s) {', '.join(dropped)} failed: {'; '.join(failures)}")
    return pacs


# -- data sets and the store pipeline ---------------------------------------------------------


def make_dataset(**attributes: Any) -> Dataset:
    """A small valid CT image (8x8 pixels, explicit VR little endian), new UIDs.

    Keyword arguments set DICOM attributes by keyword (``PatientID="P1"``,
    ``Modality="MR"``, ``StudyInstanceUID=...``); ``None`` removes one.  An
    unknown keyword raises ``ValueError``.
    """
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT1"
    ds.PatientName = "DOE^JOHN"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in attributes.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    if "PixelData" not in attributes and "Rows" in ds and "Columns" in ds:
        ds.PixelData = bytes(ds.Rows * ds.Columns * 2)  # 16 bits allocated, all black
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


class StoreFailed(AssertionError):
    """:func:`store` did not store a new instance; ``result`` says why."""

    def __init__(self, result: StoreResult) -> None:
        super().__init__(f"not stored: status 0x{result.status:04X} {result.comment}".strip())
        self.result = result


def _dataset_bytes(data: Dataset | bytes | str | Path) -> tuple[bytes, str]:
    """(data set bytes after the file meta, transfer syntax) of what ``store`` accepts."""
    if isinstance(data, (str, Path)):
        return load_dataset_bytes(Path(data))
    if isinstance(data, bytes):
        if data[: len(PREAMBLE)][-4:] != b"DICM":
            raise ValueError("bytes must be a Part 10 file (128-byte preamble, DICM, file meta)")
        return read_part10(BytesIO(data))
    if not isinstance(data, Dataset):
        raise TypeError(f"cannot store a {type(data).__name__}")
    meta = copy.deepcopy(getattr(data, "file_meta", None) or FileMetaDataset())
    meta.TransferSyntaxUID = meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = data.SOPClassUID
    meta.MediaStorageSOPInstanceUID = data.SOPInstanceUID
    encoded = Dataset(data)  # the same elements; the caller's file meta is left alone
    encoded.file_meta = meta
    buffer = BytesIO()
    encoded.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return read_part10(buffer)


def store(
    pacs: Pacs,
    data: Dataset | bytes | str | Path,
    calling_ae: str = "TESTSCU",
    called_ae: str = "",
) -> StoredInstance:
    """Store one instance through the real pipeline, as a C-STORE from ``calling_ae``.

    ``data``: a pydicom ``Dataset`` (see :func:`make_dataset`; encoded in its
    ``file_meta.TransferSyntaxUID``, explicit VR little endian by default),
    the bytes of a Part 10 file, or a file's path.  ``filter_store`` runs,
    the file is written and indexed, and ``on_store`` is recorded in the
    outbox (deliver it with :func:`deliver_events`).  Returns what
    ``on_store`` will receive.  Raises :class:`StoreFailed` (an
    ``AssertionError``: its ``result`` has the DIMSE ``status`` and
    ``comment``) when the instance is refused, cannot be stored, or is a
    duplicate kept as stored.
    """
    dataset, transfer_syntax = _dataset_bytes(data)
    with connection():
        result = pacs.archive.store(dataset, transfer_syntax, calling_ae, called_ae)
    if not result.ok or result.instance is None:
        raise StoreFailed(result)
    return result.instance


# -- the server's background work, in the caller's thread ----------------------------------


def deliver_events(pacs: Pacs) -> int:
    """Deliver every pending ``on_store``, ``on_delete`` and ``on_worklist_change``
    event now, as the dispatcher thread would; return how many."""
    delivered = 0
    while count := pacs.outbox.drain():
        delivered += count
    return delivered


def fire_stable_studies(pacs: Pacs) -> int:
    """Fire ``on_study_stable`` for every study not yet stable, as if its quiet
    time (``study_stable_seconds``) had passed; return how many studies."""
    quiet = timedelta(seconds=pacs.settings.core["study_stable_seconds"] + 1)
    with connection(), write_transaction():
        Study.update(last_received=utcnow() - quiet).where(~Study.stable).execute()
    return pacs.outbox.fire_stable_studies()


def run_jobs(pacs: Pacs, kinds: Iterable[str] | None = None, limit: int = 100) -> int:
    """Run the jobs due now (of ``kinds``, by default every kind with a handler),
    one after the other, as the job workers would; return how many attempts ran.

    A failing attempt is recorded and retried on its schedule, so it is not due
    again now; ``limit`` bounds the attempts (a handler postponing by 0 s).
    """
    kinds = list(pacs.jobs.handlers() if kinds is None else kinds)
    worker = worker_name("testing")
    attempts = 0
    while attempts < limit and (job := pacs.jobs.take(kinds, worker)) is not None:
        pacs.jobs.run(job)
        attempts += 1
    return attempts


# -- the console and the REST API ----------------------------------------------------------


class ConsoleClient:
    """A Flask test client logged in to the console, sending the CSRF token
    a browser would.  ``client`` is the raw Flask client (no token added)."""

    def __init__(self, app: Flask, login: str, password: str) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.login, self.password = login, password
        response = self.client.post(
            "/login", data={"login": login, "password": password, "csrf_token": self.csrf()}
        )
        if response.status_code != 302:
            raise AssertionError(f"login as {login!r} failed: {response.status_code}")

    def csrf(self) -> str:
        """The session's CSRF token (a login page is fetched for a new session)."""
        with self.client.session_transaction() as session:
            token = session.get("csrf")
        if token is None:
            match = CSRF_INPUT.search(self.client.get("/login").text)
            if match is None:
                raise AssertionError("the login page has no CSRF token")
            token = match.group(1)
        return token

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> TestResponse:
        """A form post, with the CSRF token."""
        return self.client.post(path, data={**(data or {}), "csrf_token": self.csrf()}, **kwargs)

    def api(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        """A REST API call (``json=...`` for a body), with the CSRF header."""
        headers = {"X-CSRF-Token": self.csrf(), **kwargs.pop("headers", {})}
        return self.client.open(path, method=method, headers=headers, **kwargs)


def console_client(
    pacs: Pacs,
    profile: str = ADMIN_PROFILE,
    login: str | None = None,
    app: Flask | None = None,
) -> ConsoleClient:
    """A console client logged in as a local user of ``profile`` (by default
    the administrator, every right), created (or reset) for the purpose.

    The application is the real one (``pacscore.web.create_app``), with the
    pages of the plugins registered on ``pacs``; pass ``app`` to share one
    between several clients.
    """
    from pacscore.web import create_app  # Flask only for the tests that use it

    login = login or ("admin" if profile == ADMIN_PROFILE else profile.replace(" ", "_"))
    password = secrets.token_urlsafe(12)
    with connection():
        if not Profile.select().where(Profile.name == profile).exists():
            raise ValueError(f"no profile named {profile!r}")
        User.insert(login=login, profile=profile).on_conflict_ignore().execute()
        User.update(
            profile=profile,
            password_hash=hash_password(password),
            password_changed=utcnow(),
            must_change_password=False,
            status="active",
            auth_source="local",
            failed_attempts=0,
            locked_until=None,
        ).where(User.login == login).execute()
    return ConsoleClient(app or create_app(pacs, {"TESTING": False}), login, password)
