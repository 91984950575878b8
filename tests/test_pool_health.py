"""``/api/v1/health`` checks the database and says what failed (issue 20).

It used to answer ``{"status": "ok"}`` without touching the database, so a
server whose pool was empty (every store, query and HL7 message failing)
looked healthy to monitoring.  It now takes a connection from the pool and
queries a table within a bounded time, answers 503 naming the failed part,
and stays public.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from pacscore.db import connection
from pacscore.web import create_app
from tests.conftest import new_pacs

POOL_SIZE = 2
BOUND_SECONDS = 5  # the check gives up after 2 s; the answer must come soon after


def with_pool_size(url: str, size: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}max_connections={size}"


@pytest.fixture
def pacs(tmp_path, db_url):
    built = new_pacs(tmp_path / "home", with_pool_size(db_url, POOL_SIZE))
    built.db_url = db_url
    yield built
    built.database.close_all()


@pytest.fixture
def client(pacs):
    return create_app(pacs, {"TESTING": True}).test_client()


def get_health(client) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = client.get("/api/v1/health")  # no login: public
    return response.status_code, response.get_json(), time.monotonic() - started


def test_a_working_database_is_reported_ok(client, pacs):
    status, answer, _ = get_health(client)
    assert status == 200, answer
    assert answer["status"] == "ok" and answer["aet"] == pacs.config.aet
    database = answer["checks"]["database"]
    assert database["status"] == "ok" and database["latency_ms"] >= 0
    assert database["connections"]["max"] == POOL_SIZE


def test_a_pool_without_a_free_connection_answers_503_in_time(client, pacs):
    release = threading.Event()
    holding = threading.Barrier(POOL_SIZE + 1, timeout=30)

    def hold() -> None:  # busy threads, each holding a connection
        with connection():
            holding.wait()
            release.wait(60)

    holders = [threading.Thread(target=hold) for _ in range(POOL_SIZE)]
    for holder in holders:
        holder.start()
    holding.wait()
    try:
        status, answer, elapsed = get_health(client)
    finally:
        release.set()
        for holder in holders:
            holder.join()
    assert status == 503, answer
    assert elapsed < BOUND_SECONDS
    database = answer["checks"]["database"]
    assert answer["status"] == "failing" and database["status"] == "failing"
    assert database["failed"] == "connection", database
    assert f"{POOL_SIZE} of {POOL_SIZE} in use" in database["error"]
    # the connections back, the check recovers
    deadline = time.monotonic() + 20
    while get_health(client)[0] != 200:
        assert time.monotonic() < deadline, "the health check did not recover"
        time.sleep(0.2)


def test_a_failing_query_answers_503_and_names_it(client, pacs):
    with connection():
        pacs.database.execute_sql("DROP TABLE schemaversion")
    status, answer, elapsed = get_health(client)
    assert status == 503 and elapsed < BOUND_SECONDS, answer
    database = answer["checks"]["database"]
    assert database["failed"] == "query" and "schemaversion" in database["error"], database


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_that_does_not_answer_is_reported_within_the_bound(client, pacs):
    """A query blocked on a lock (a hung database, a long migration): 503 after 2 s."""
    admin = psycopg2.connect(pacs.db_url)
    try:
        admin.cursor().execute("LOCK TABLE schemaversion IN ACCESS EXCLUSIVE MODE")
        status, answer, elapsed = get_health(client)
    finally:
        admin.rollback()
        admin.close()
    assert status == 503 and elapsed < BOUND_SECONDS, answer
    database = answer["checks"]["database"]
    assert database["failed"] == "query" and "no answer within 2 s" in database["error"]
