"""No thread keeps a database connection once it has ended (issue 20), in one process.

peewee connects on the first query a thread runs outside ``connection()``
and keeps that connection in the thread's own state; the pool counted it in
use for ever once the thread had ended.  These tests give the pool a few
connections and run many more threads than that.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from peewee import DatabaseError

from pacscore.db import PoolExhausted, connection, db
from pacscore.models import Setting
from tests.conftest import new_pacs

POOL_SIZE = 2
THREADS = 20


def with_pool_size(url: str, size: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}max_connections={size}"


@pytest.fixture
def pacs(tmp_path, db_url):
    """A Pacs whose pool has POOL_SIZE connections."""
    built = new_pacs(tmp_path / "home", with_pool_size(db_url, POOL_SIZE))
    yield built
    built.database.close_all()


def run_threads(target, count: int = THREADS) -> list[str]:
    """Run ``target`` in ``count`` threads, one after the other; their failures."""
    failures: list[str] = []

    def run(number: int) -> None:
        try:
            target(number)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(f"thread {number}: {type(exc).__name__}: {exc}")

    for number in range(count):
        thread = threading.Thread(target=run, args=(number,), name=f"worker-{number}")
        thread.start()
        thread.join()
    return failures


def query_outside_connection(number: int) -> None:
    Setting.select().count()  # peewee connects, and nothing closes
    if number % 2:
        raise RuntimeError("this thread ends by an exception")


def test_threads_that_query_outside_connection_give_their_connection_back(pacs, caplog):
    failures = run_threads(query_outside_connection)
    failures = [f for f in failures if "ends by an exception" not in f]
    assert not failures, failures
    # and the pool is whole: as many threads as it has connections hold one at once
    holding = threading.Barrier(POOL_SIZE + 1, timeout=30)

    def hold(number: int) -> None:
        with connection():
            Setting.select().count()
            holding.wait()  # all hold one now
            holding.wait()  # the test saw it

    holders = [threading.Thread(target=hold, args=(n,)) for n in range(POOL_SIZE)]
    for holder in holders:
        holder.start()
    holding.wait()
    assert pacs.database.usage()["in_use"] == POOL_SIZE
    holding.wait()
    for holder in holders:
        holder.join()
    with connection():
        assert Setting.select().count() >= 0
    # each ended thread is named, with the query that took its connection
    warnings = [r.getMessage() for r in caplog.records if "ended holding" in r.getMessage()]
    assert warnings and "test_pool_threads.py" in warnings[0], warnings


def test_a_generator_closed_by_another_thread_leaves_that_threads_connection_alone(pacs):
    """A suspended handler generator finalised elsewhere (as the garbage collector does)
    used to close the connection of whichever thread finalised it, mid-transaction."""

    def handler():
        with connection():
            Setting.select().count()
            yield 1
            yield 2

    suspended = handler()
    assert next(suspended) == 1  # this thread now holds the block's connection
    failures: list[str] = []

    def finalise_elsewhere() -> None:
        try:
            with connection(), db.atomic():
                Setting.create(key="written", value="1")
                suspended.close()
                Setting.create(key="after", value="2")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(f"{type(exc).__name__}: {exc}")

    other = threading.Thread(target=finalise_elsewhere)
    other.start()
    other.join()
    assert not failures, failures
    with connection():
        assert Setting.select().where(Setting.key.in_(["written", "after"])).count() == 2
    # the block's connection stayed with this thread (given back when it ends): close it
    assert not db.is_closed()
    db.close()
    assert pacs.database.usage()["in_use"] == 0


def test_a_full_pool_takes_back_the_connections_of_ended_threads(pacs, caplog):
    """The backstop: a connection whose thread ended without its guard acting (simulated
    by disarming the guard) is taken back, loudly, when the pool would refuse."""

    def lose_connection(number: int) -> None:
        Setting.select().count()
        pacs.database._guards.guard.pool = None  # as if the guard had not run

    assert not run_threads(lose_connection, POOL_SIZE)
    assert pacs.database.usage()["in_use"] == POOL_SIZE
    with caplog.at_level(logging.ERROR, logger="pacscore.db"), connection():
        assert Setting.select().count() >= 0
    assert any(
        "took back 2 connection(s) of ended threads" in r.getMessage() for r in caplog.records
    )


def test_an_exhausted_pool_is_a_database_error_naming_its_holders(pacs):
    pacs.database.init(pacs.database.database, timeout=0.5)  # do not wait 10 s here
    release = threading.Event()
    holding = threading.Barrier(POOL_SIZE + 1, timeout=30)

    def hold(number: int) -> None:
        with connection():
            holding.wait()
            release.wait(30)

    holders = [threading.Thread(target=hold, args=(n,), name=f"holder-{n}") for n in range(2)]
    for holder in holders:
        holder.start()
    holding.wait()
    started = time.monotonic()
    try:
        with pytest.raises(PoolExhausted) as raised, connection():
            pass
    finally:
        release.set()
        for holder in holders:
            holder.join()
    assert time.monotonic() - started < 5
    assert isinstance(raised.value, DatabaseError)  # what callers already survive
    assert "2 of 2 in use (by holder-0, holder-1)" in str(raised.value)
