"""SQLite writers queue for the write lock instead of polling for it (db.py).

SQLite's busy timeout retries a locked database after sleeps of 1, 2, 5, 10...
ms; ``write_transaction`` makes a writer wait on a lock that hands over at once.
Each test gives the second writer a busy timeout of zero: were it to meet
SQLite's lock held by the first, its ``BEGIN IMMEDIATE`` would fail with
"database is locked" instead of waiting.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from pacscore.db import BUSY_TIMEOUT_SECONDS, bind_database, connection, write_transaction
from pacscore.migrations import create_tables
from pacscore.models import Node

HOLD_SECONDS = 0.5


def add_node(name: str, busy_timeout_ms: int | None = None) -> None:
    database = Node._meta.database
    with connection():
        if busy_timeout_ms is not None:
            database.execute_sql(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        try:
            with write_transaction():
                Node.create(name=name, aet=name.upper(), host="127.0.0.1", port=104)
        finally:  # the pool hands this connection out again
            database.execute_sql(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")


def hold_the_write_lock(entered: threading.Event | None = None) -> None:
    with connection(), write_transaction():
        Node.create(name="first", aet="FIRST", host="127.0.0.1", port=104)
        if entered is not None:
            entered.set()
        time.sleep(HOLD_SECONDS)


def add_node_in_a_process(url: str, home: str, start, done) -> None:
    """Another process: waits until told, then writes with a zero busy timeout."""
    bind_database(url, Path(home))
    start.wait(30)
    try:
        add_node("second", busy_timeout_ms=0)
        done.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        done.put(repr(exc))


@pytest.fixture
def sqlite_home(tmp_path):
    database = bind_database("sqlite:///index.db", tmp_path)
    create_tables()
    yield tmp_path
    database.close_all()


def node_names() -> list[str]:
    with connection():
        return [node.name for node in Node.select().order_by(Node.id)]


def test_a_writer_of_another_thread_waits_its_turn(sqlite_home):
    entered = threading.Event()
    holder = threading.Thread(target=hold_the_write_lock, args=(entered,))
    holder.start()
    assert entered.wait(10)
    errors = []

    def second() -> None:
        try:
            add_node("second", busy_timeout_ms=0)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    writer = threading.Thread(target=second)
    writer.start()
    holder.join()
    writer.join(10)
    assert errors == []
    assert node_names() == ["first", "second"]


def test_a_writer_of_another_process_waits_its_turn(sqlite_home):
    context = multiprocessing.get_context("spawn")
    start, done = context.Event(), context.Queue()
    child = context.Process(
        target=add_node_in_a_process,
        args=("sqlite:///index.db", str(sqlite_home), start, done),
    )
    child.start()
    try:
        entered = threading.Event()
        holder = threading.Thread(target=hold_the_write_lock, args=(entered,))
        holder.start()
        assert entered.wait(10)
        start.set()  # the child now writes while this process holds the lock
        holder.join()
        assert done.get(timeout=30) == "ok"
    finally:
        child.join(10)
    assert node_names() == ["first", "second"]


def test_a_nested_write_transaction_does_not_wait_for_itself(sqlite_home):
    with connection(), write_transaction():
        Node.create(name="outer", aet="OUTER", host="127.0.0.1", port=104)
        add_node("inner")
    assert node_names() == ["outer", "inner"]
