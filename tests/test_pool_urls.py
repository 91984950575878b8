"""Database URLs: every libpq parameter reaches PostgreSQL, and no password is shown.

``make_database`` used to parse a PostgreSQL URL by hand and drop its query:
``?host=/var/run/postgresql`` (a unix socket, the usual way to a local
server) connected to 127.0.0.1 instead, and ``sslmode=verify-full`` to a
remote server was silently ignored.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from pacscore.db import display_url, make_database
from tests.conftest import PacsProcess

SOCKET_DIR = "/var/run/postgresql"
PASSWORD = "s3cr3t-Pw"  # trust authentication: any password is accepted

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def database_name(db_url: str) -> str:
    return urlsplit(db_url).path.lstrip("/")


def server_side(url: str, sql: str):
    """One value, as seen from a connection pacscore's database object opened."""
    database = make_database(url)
    try:
        with database.connection_context():
            return database.execute_sql(sql).fetchone()[0]
    finally:
        database.close_all()


@pytest.mark.skipif(not os.path.exists(SOCKET_DIR), reason="no local PostgreSQL socket")
def test_a_unix_socket_url_reaches_the_local_server(tmp_path, db_url):
    url = f"postgresql://postgres@/{database_name(db_url)}?host={SOCKET_DIR}"
    home = PacsProcess(tmp_path / "home", url).init()
    assert home.cli("node", "list").returncode == 0  # the saved URL opens again
    # no server address: the connection went through the socket, not TCP to 127.0.0.1
    assert server_side(url, "SELECT inet_server_addr()") is None


def test_sslmode_and_other_parameters_reach_libpq(tmp_path, db_url):
    # this test server has no SSL: a URL requiring it must fail, and say why
    required = f"{db_url}?sslmode=require"
    result = PacsProcess(tmp_path / "required", required).cli("init", "--db", required, check=False)
    assert result.returncode != 0
    assert "server does not support SSL" in result.stderr, result.stderr
    # several parameters at once, and pacscore's own pool size among them
    url = f"{db_url}?sslmode=disable&application_name=pacscore-test&max_connections=3"
    PacsProcess(tmp_path / "home", url).init()
    assert server_side(url, "SELECT current_setting('application_name')") == "pacscore-test"
    assert server_side(url, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
    assert make_database(url)._max_connections == 3
    # a parameter libpq does not know is refused with its name
    bad = f"{db_url}?sslmod=require"
    result = PacsProcess(tmp_path / "bad", bad).cli("init", "--db", bad, check=False)
    assert result.returncode != 0 and "sslmod" in result.stderr, result.stderr


def test_the_password_is_masked_in_every_output(tmp_path, db_url):
    base = urlsplit(db_url)
    url = f"postgresql://postgres:{PASSWORD}@{base.netloc.split('@')[-1]}{base.path}"
    home = PacsProcess(tmp_path / "home", url)
    output = home.cli("init", "--db", url).stdout
    assert f"database: postgresql://postgres:***@{base.netloc.split('@')[-1]}" in output, output
    assert PASSWORD not in output
    assert PASSWORD in (home.home / "pacscore.toml").read_text()  # it must connect
    # errors: an unreachable server, a malformed URL (libpq quotes what it could not read)
    for bad in (
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/pacs?connect_timeout=3",
        f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1/pacs",
        f"postgresql://postgres@127.0.0.1/pacs?password={PASSWORD}&sslmode=bogus",
    ):
        result = PacsProcess(tmp_path / "bad", bad).cli("init", "--db", bad, check=False)
        assert result.returncode != 0 and "cannot open database" in result.stderr, result.stderr
        assert PASSWORD not in result.stdout + result.stderr, result.stderr
    assert display_url(f"postgresql://u:{PASSWORD}@h/db?password={PASSWORD}") == (
        "postgresql://u:***@h/db?password=***"
    )


def test_the_pool_size_parameter_is_checked(tmp_path, db_url):
    for bad in ("sqlite:///index.db?max_connections=0", "sqlite:///index.db?journal=off"):
        result = PacsProcess(tmp_path / "home", bad).cli("init", "--db", bad, check=False)
        assert result.returncode != 0 and "cannot open database" in result.stderr
        assert ("max_connections" if "max" in bad else "journal") in result.stderr
    assert make_database("sqlite:///index.db?max_connections=5", tmp_path)._max_connections == 5
