"""Fixtures of the router tests (defined in router_fixtures.py, shared by its files)."""

from router_fixtures import router_pacs, storescp  # noqa: F401

from tests.conftest import db_url  # noqa: F401 - SQLite and PostgreSQL, as in the core tests
