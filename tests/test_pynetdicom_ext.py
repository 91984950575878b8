"""pacscore's pynetdicom extensions (pacscore/dicom/pynetdicom_ext): one registry
installs them, only on a tested pynetdicom, and each is pinned to the source of the
upstream definitions it replaces, wraps or relies on, so that upgrading pynetdicom
is a deliberate act (docs/architecture.md, "Small pynetdicom extensions").

That nothing outside the package rebinds a pynetdicom attribute is checked with the
other layering rules, in tests/test_layers.py.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pynetdicom
import pytest
from pynetdicom import fsm
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationServer, AssociationSocket

from pacscore.dicom import pynetdicom_ext, scp
from pacscore.dicom.pynetdicom_ext import ALLOW_UNTESTED, TESTED_PYNETDICOM, UnsupportedPynetdicom
from tests.conftest import PacsProcess

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(pynetdicom_ext.__file__).parent
UNTESTED = "3.1.0"
REFUSAL = (
    f"pacscore's pynetdicom extensions were tested with {', '.join(TESTED_PYNETDICOM)}; "
    f"installed {UNTESTED}: "
)


def recorded() -> list[tuple[str, str, str]]:
    """(who relies on it, upstream definition, SHA-256 recorded) of every extension,
    and of the listener's accept loop (dicom/scp.py)."""
    return [
        *pynetdicom_ext.upstream_targets(),
        *(("dicom/scp.py", target, digest) for target, digest in scp.UPSTREAM.items()),
    ]


@pytest.mark.parametrize(
    ("owner", "target", "digest"), recorded(), ids=[f"{o}:{t}" for o, t, _ in recorded()]
)
def test_each_upstream_definition_is_the_tested_one(owner: str, target: str, digest: str):
    try:
        source = pynetdicom_ext.upstream_source(target)
    except LookupError as exc:
        pytest.fail(f"{owner}: {target} is gone from pynetdicom {pynetdicom.__version__}: {exc}")
    now = hashlib.sha256(source.encode()).hexdigest()
    assert now == digest, (
        f"{owner}: {target} changed in pynetdicom {pynetdicom.__version__}: review the "
        f"extension against the new source, then record {now} "
        "(docs/architecture.md, upgrading pynetdicom)"
    )


def test_the_upstream_source_is_pynetdicoms_not_the_installed_replacement():
    pynetdicom_ext.install_all()
    assert DULServiceProvider._read_pdu_data.__module__.startswith("pacscore.")
    source = pynetdicom_ext.upstream_source("pynetdicom.dul.DULServiceProvider._read_pdu_data")
    assert source.startswith("    def _read_pdu_data(self) -> None:\n")
    assert "_reader(self)" not in source
    with pytest.raises(LookupError, match="no_such_method"):
        pynetdicom_ext.upstream_source("pynetdicom.dul.DULServiceProvider.no_such_method")


def test_every_module_of_the_package_is_a_registered_extension():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == {e.name for e in pynetdicom_ext.EXTENSIONS}
    for extension in pynetdicom_ext.EXTENSIONS:
        module = pynetdicom_ext.module(extension)
        assert callable(module.install), extension.name
        assert module.UPSTREAM, f"{extension.name} records no upstream definition"
        assert all(t.startswith("pynetdicom.") for t in module.UPSTREAM), extension.name


def patched() -> list[object]:
    """What a few extensions put in place of pynetdicom's definitions."""
    return [
        DULServiceProvider._read_pdu_data,
        DULServiceProvider.receive_pdu,
        DULServiceProvider.send_pdu,
        DULServiceProvider.__init__,
        AssociationSocket.send,
        AssociationSocket.recv,
        AssociationServer.get_request,
        fsm.ACTIONS["DT-1"],
    ]


def test_installing_again_wraps_nothing_twice():
    pynetdicom_ext.install_all()
    before = patched()
    pynetdicom_ext.install_client()
    pynetdicom_ext.install_all()
    pynetdicom_ext.install_all(lean_store=False)
    assert patched() == before
    assert pynetdicom_ext.installed() == {e.name for e in pynetdicom_ext.EXTENSIONS}


@pytest.fixture
def installs(monkeypatch) -> list[str]:
    """The extensions the registry installs from now on, in order; a fresh process as
    far as the registry knows, and pynetdicom itself left alone."""
    calls: list[str] = []

    def module(extension):
        return SimpleNamespace(install=lambda: calls.append(extension.name))

    monkeypatch.setattr(pynetdicom_ext, "module", module)
    monkeypatch.setattr(pynetdicom_ext, "_installed", set())
    monkeypatch.setattr(pynetdicom_ext, "_allowed_untested", set())
    return calls


@pytest.fixture
def untested(monkeypatch, installs) -> list[str]:
    """pynetdicom says it is a version the extensions were not tested with."""
    monkeypatch.setattr(pynetdicom, "__version__", UNTESTED)
    monkeypatch.delenv(ALLOW_UNTESTED, raising=False)
    return installs


SERVER = [
    "access", "rawsend", "nodelay", "shared_listener", "shared_contexts", "dul_guard",
    "reactor_waits", "reply_race", "command_sets", "lean_send", "lean_store", "log_identifiers",
]  # fmt: skip
CLIENT = ["rawsend", "nodelay", "dul_guard", "reply_race", "command_sets", "lean_send"]


def test_each_extension_is_installed_once_in_order(installs):
    pynetdicom_ext.install_client()
    assert installs == CLIENT
    pynetdicom_ext.install_all(lean_store=False)
    pynetdicom_ext.install_all()
    # the log setting follows the log level of each start
    assert installs == [
        *CLIENT,
        *(name for name in SERVER if name not in CLIENT and name != "lean_store"),
        "lean_store",
        "log_identifiers",
    ]


@pytest.mark.parametrize("install", [pynetdicom_ext.install_all, pynetdicom_ext.install_client])
def test_an_untested_pynetdicom_is_refused(untested, install):
    with pytest.raises(UnsupportedPynetdicom, match=re.escape(REFUSAL)) as refused:
        install()
    assert f"{ALLOW_UNTESTED}={UNTESTED}" in str(refused.value)
    assert untested == []
    assert pynetdicom_ext.installed() == set()


def test_another_version_may_be_tried_deliberately(untested, monkeypatch, caplog):
    monkeypatch.setenv(ALLOW_UNTESTED, "3.0.9")  # not the one installed: still refused
    with pytest.raises(UnsupportedPynetdicom):
        pynetdicom_ext.install_client()
    monkeypatch.setenv(ALLOW_UNTESTED, UNTESTED)
    with caplog.at_level(logging.WARNING, logger=pynetdicom_ext.__name__):
        pynetdicom_ext.install_client()
        pynetdicom_ext.install_all()
    assert untested == [*CLIENT, *(name for name in SERVER if name not in CLIENT)]
    warnings = [r.getMessage() for r in caplog.records if r.name == pynetdicom_ext.__name__]
    assert len(warnings) == 1 and f"pynetdicom {UNTESTED} is not a version" in warnings[0]


SITECUSTOMIZE = f'''
"""Test only (tests/test_pynetdicom_ext.py): pynetdicom claims to be {UNTESTED}."""
import pynetdicom

pynetdicom.__version__ = "{UNTESTED}"
'''


def test_serve_exits_with_the_refusal_on_an_untested_pynetdicom(tmp_path):
    home = PacsProcess(tmp_path / "home", "sqlite:///index.db").init()
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in home.env.items() if k != ALLOW_UNTESTED}
    env["PYTHONPATH"] = ":".join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [
            sys.executable, "-m", "pacscore", "--home", str(home.home), "serve",
            "--host", "127.0.0.1", "--dicom-port", str(home.dicom_port),
            "--http-port", str(home.http_port), "--hl7-port", str(home.hl7_port),
        ],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: {REFUSAL}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "DICOM listening" not in result.stderr + result.stdout


def test_setup_cfg_pins_the_tested_pynetdicom():
    """A fresh install gets the version the extensions were tested with, not one the
    guard would refuse."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    requirements = setup["options"]["install_requires"].split()
    (pin,) = [r for r in requirements if r.startswith("pynetdicom")]
    assert pin == f"pynetdicom=={TESTED_PYNETDICOM[-1]}"
