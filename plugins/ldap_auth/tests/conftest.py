"""Fixtures of the ldap_auth tests: a real slapd per module, a Pacs per test."""

from __future__ import annotations

import logging

import pacscore_ldap_auth
import pytest
from ldap_test_server import BASE_TREE, AlertRecorder, Pki, TestSlapd, make_pki

from pacscore.app import Pacs
from pacscore.config import Config


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("ldap-pki"))


@pytest.fixture(scope="module")
def slapd(tmp_path_factory, pki):
    logging.getLogger("python-ldap-test").setLevel(logging.ERROR)
    server = TestSlapd(tmp_path_factory.mktemp("slapd"), pki)
    server.start()
    try:
        server.add(BASE_TREE)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pacs(tmp_path):
    """A Pacs on SQLite with ldap_auth registered; ``pacs.recorded_alerts`` lists alerts."""
    home = tmp_path / "home"
    Config(home=home, db_url="sqlite:///index.db").save()
    application = Pacs(Config.load(home))
    application.prepare()
    recorder = AlertRecorder()
    application.hooks.register(pacscore_ldap_auth, name="ldap_auth")
    application.hooks.register(recorder, name="alert_recorder")
    application.recorded_alerts = recorder.alerts
    yield application
    application.database.close_all()
