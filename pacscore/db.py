"""The database: URLs, the connection pool, transactions, durability, health.

``db`` is peewee's database proxy, bound once per process by
:func:`bind_database` (``sqlite:///...`` or ``postgresql://...``); every table
(:mod:`pacscore.models`, the plugins' models) is bound to it.  Here too: the
pool whose connections cannot outlive their threads (``ThreadBoundPool``),
``connection()``, ``write_transaction()`` (BEGIN IMMEDIATE on SQLite, writers
queued on a flock; a C-STORE's commit does not wait for the disk),
``make_commits_durable()`` and ``check_database()`` (the health check).
"""

from __future__ import annotations

import enum
import fcntl
import getpass
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from peewee import DatabaseProxy, OperationalError
from playhouse.pool import (
    MaxConnectionsExceeded,
    PooledDatabase,
    PooledPostgresqlDatabase,
    PooledSqliteDatabase,
)

log = logging.getLogger(__name__)

db = DatabaseProxy()

# how long a SQLite writer waits for another before 'database is locked'
BUSY_TIMEOUT_SECONDS = 30


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- the connection pool ----------------------------------------------------------------

# pool sizes per process, unless the URL says otherwise (?max_connections=N)
DEFAULT_MAX_CONNECTIONS = {"sqlite": 64, "postgresql": 32}
# how long a thread waits for a free connection before PoolExhausted
POOL_WAIT_SECONDS = 10
# query parameters of a database URL that are pacscore's, not the driver's
POOL_PARAMETERS = ("max_connections",)
_HERE = os.path.dirname(os.path.abspath(__file__))


class PoolExhausted(MaxConnectionsExceeded, OperationalError):
    """No connection became free in time: to callers, the database is unavailable."""


class _Guard:
    """Lives in the thread-local storage of a thread holding a pooled connection.

    CPython frees a thread's thread-local values as the thread ends, whatever
    ended it: the guard then gives back the connection the thread still held.
    """

    __slots__ = ("key", "pid", "pool", "record", "site")

    def __init__(self, pool: ThreadBoundPool, key: int, record: Any) -> None:
        self.pool: ThreadBoundPool | None = pool
        self.key = key
        self.record = record  # the pool's record of this checkout
        self.site = ""  # where a query outside connection() connected
        self.pid = os.getpid()

    def __del__(self) -> None:
        try:  # the thread is ending (or the interpreter): nobody to raise to
            pool = self.pool
            # a fork frees the other threads' guards in the child: their connections
            # are the parent's (and the pool's lock may be held there for good)
            if pool is not None and os.getpid() == self.pid:
                pool._thread_ended(self)
        except Exception:  # noqa: BLE001, S110
            pass


class ThreadBoundPool(PooledDatabase):
    """A peewee pool whose connections cannot outlive the threads that took them.

    peewee keeps each thread's connection in thread-local state and counts it
    in use until that thread closes it; it also connects on the first query
    outside ``connection()``.  A thread that queried there and then ended (an
    association thread after an abort, a timeout, an exception) kept its
    connection for ever, and once the pool was empty every store, query and
    HL7 message failed.  Here:

    1. a thread that ends holding a connection gives it back (``_Guard``), and
       the next checkout logs a warning naming the thread and the query;
    2. a pool found full first takes back the connections of threads that no
       longer run (logged as errors: the guard should have done it);
    3. a thread that finds the pool full waits ``POOL_WAIT_SECONDS`` for a
       connection, then gets ``PoolExhausted``, an ``OperationalError`` naming
       the threads holding them (code that survives a database outage
       survives this too).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._owners: dict[int, tuple[Any, weakref.ref, str]] = {}  # key -> record, thread
        self._guards = threading.local()
        self._given_back: deque[tuple[str, str]] = deque()  # (thread, site), to log
        # one health check at a time: a hung database does not pile up checking threads
        self.health_check_running = threading.Lock()
        super().__init__(*args, **kwargs)

    def connect(self, reuse_if_open: bool = False) -> bool:
        try:
            opened = super().connect(reuse_if_open)
        except MaxConnectionsExceeded:
            raise PoolExhausted(self._exhausted_message()) from None
        self._log_given_back()
        return opened

    def _exhausted_message(self) -> str:
        with self._pool_lock:
            holders = sorted(
                name
                for key, (record, _, name) in self._owners.items()
                if self._in_use.get(key) is record
            )
        shown = ", ".join(holders[:8]) + (", ..." if len(holders) > 8 else "")
        return (
            f"no free database connection within {self._wait_timeout or 0:g} s: "
            f"{len(self._in_use)} of {self._max_connections} in use (by {shown or '?'})"
        )

    def _connect(self) -> Any:
        with self._pool_lock:
            try:
                conn = super()._connect()
            except MaxConnectionsExceeded:
                if not self._reclaim_from_dead_threads():
                    raise
                conn = super()._connect()
            key = self.conn_key(conn)
            record = self._in_use[key]
            thread = threading.current_thread()
            self._owners[key] = (record, weakref.ref(thread), thread.name)
        # replaces (and frees) a guard whose connection went back some other way
        self._guards.guard = _Guard(self, key, record)
        return conn

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        key = self.conn_key(conn)
        with self._pool_lock:
            self._owners.pop(key, None)
            super()._close(conn, close_conn)
        guard = getattr(self._guards, "guard", None)
        if guard is not None and guard.key == key:
            guard.pool = None  # given back by its thread: nothing left to do
            self._guards.guard = None

    def _thread_ended(self, guard: _Guard) -> None:
        """Runs as a thread's guard is freed (the thread ended, or took another connection)."""
        with self._pool_lock:
            if self._in_use.get(guard.key) is not guard.record:
                return  # given back already
            _, _, name = self._owners.pop(guard.key, (None, None, "?"))
            super()._close(guard.record.connection)  # rolled back if needed, then pooled
        # logged by the next checkout: logging here, as the thread's state is torn
        # down, would register a dummy thread
        self._given_back.append((name, guard.site))

    def _reclaim_from_dead_threads(self) -> int:
        """Close the connections of threads that no longer run; called with the pool full."""
        dead = []
        for key, (record, thread_ref, name) in list(self._owners.items()):
            if self._in_use.get(key) is not record:
                del self._owners[key]  # closed outside _close (close_all, close_stale)
                continue
            thread = thread_ref()
            if thread is None or not thread.is_alive():
                del self._owners[key], self._in_use[key]
                self._close_raw(record.connection)
                dead.append(name)
        if dead:
            log.error(
                "database pool full: took back %d connection(s) of ended threads (%s)",
                len(dead),
                ", ".join(dead[:10]),
            )
            self._pool_available.notify_all()
        return len(dead)

    def _log_given_back(self) -> None:
        while self._given_back:
            try:
                name, site = self._given_back.popleft()
            except IndexError:  # taken by another thread meanwhile
                return
            log.warning(
                "thread %s ended holding a database connection%s; it went back to the pool",
                name,
                f" (taken outside connection() at {site})" if site else "",
            )

    def _autoconnect(self) -> None:
        """peewee connects on a query outside ``connection()``: remember where."""
        if self.is_closed() and self.autoconnect:
            self.connect()
            guard = getattr(self._guards, "guard", None)
            if guard is not None:
                guard.site = _caller_site()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self._autoconnect()
        return super().cursor(*args, **kwargs)

    def connection(self) -> Any:
        self._autoconnect()
        return super().connection()

    def usage(self) -> dict[str, int]:
        """Connections in use and idle in this process's pool, and its size."""
        with self._pool_lock:
            return {
                "in_use": len(self._in_use),
                "idle": len(self._connections),
                "max": self._max_connections,
            }


def _caller_site() -> str:
    """``file:line`` of the first caller outside peewee and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__ and "peewee" not in filename and "playhouse" not in filename:
            return f"{os.path.relpath(filename, os.path.dirname(_HERE))}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


class PacsSqliteDatabase(ThreadBoundPool, PooledSqliteDatabase):
    pass


class PacsPostgresqlDatabase(ThreadBoundPool, PooledPostgresqlDatabase):
    pass


# -- database URLs ----------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, str, str]:
    """(scheme, everything between '://' and the query, query) of a URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", url, ""
    rest, _, query = rest.partition("?")
    return scheme.lower(), rest, query


def _url_passwords(url: str) -> list[str]:
    """The password(s) a URL carries, as written and decoded."""
    _, rest, query = _split_url(url)
    authority = rest.partition("/")[0]
    userinfo, at, _ = authority.rpartition("@")
    found = []
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    found += [
        value
        for item in query.split("&")
        for key, _, value in [item.partition("=")]
        if unquote(key).lower() == "password"
    ]
    return [form for secret in found if secret for form in {secret, unquote(secret)}]


def display_url(url: str) -> str:
    """``url`` with its password masked: what logs, messages and outputs show."""
    scheme, rest, query = _split_url(url)
    if not scheme:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{hosts}"
    items = [
        f"{item.partition('=')[0]}=***" if unquote(item.partition("=")[0]).lower() == "password"
        else item
        for item in query.split("&")
    ] if query else []  # fmt: skip
    return f"{scheme}://{authority}{slash}{path}" + (f"?{'&'.join(items)}" if items else "")


def redact(text: str, url: str) -> str:
    """``text`` (an error message) without the password of ``url``."""
    text = text.replace(url, display_url(url))
    for secret in sorted(_url_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _pool_options(query: str, url: str) -> tuple[dict[str, int], str]:
    """pacscore's own parameters taken out of a URL's query, and the rest as written."""
    options: dict[str, int] = {}
    rest = []
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        if unquote(key) not in POOL_PARAMETERS:
            rest.append(item)
            continue
        try:
            options[unquote(key)] = number = int(unquote(value))
        except ValueError:
            number = 0
        if number < 1:
            raise ValueError(f"{unquote(key)} must be a positive number in {display_url(url)}")
    return options, "&".join(rest)


def make_database(url: str, home: Path | None = None) -> ThreadBoundPool:
    """Create the peewee database for ``url``; relative SQLite paths are under ``home``.

    ``sqlite:///PATH`` or any libpq connection URI (``postgresql://...``, with
    every libpq parameter: ``host=/var/run/postgresql``, ``sslmode``...).
    Either may end in ``max_connections=N``: the pool size of each process.
    """
    scheme, rest, query = _split_url(url)
    options, query = _pool_options(query, url)
    if scheme == "sqlite" and rest.startswith("/"):
        return _sqlite_database(rest[1:], query, home, options, url)
    if scheme in ("postgres", "postgresql"):
        return _postgresql_database(f"{scheme}://{rest}" + (f"?{query}" if query else ""), options)
    raise ValueError(
        f"unsupported database URL {display_url(url)!r}: use sqlite:///PATH or postgresql://..."
    )


def _sqlite_database(
    path_text: str, query: str, home: Path | None, options: dict[str, int], url: str
) -> PacsSqliteDatabase:
    if query:
        names = ", ".join(unquote(item.partition("=")[0]) for item in query.split("&"))
        raise ValueError(f"unknown parameter(s) {names} in {display_url(url)}")
    path = Path(path_text)
    if not path.is_absolute() and home is not None:
        path = home / path
    return PacsSqliteDatabase(
        str(path),
        max_connections=options.get("max_connections", DEFAULT_MAX_CONNECTIONS["sqlite"]),
        stale_timeout=300,
        timeout=POOL_WAIT_SECONDS,
        check_same_thread=False,
        pragmas={
            "journal_mode": "wal",
            # a C-STORE success must survive a power loss, not only a crash
            "synchronous": "full",
            "foreign_keys": 1,
            "busy_timeout": BUSY_TIMEOUT_SECONDS * 1000,
            "cache_size": -16000,
        },
    )


def _postgresql_database(uri: str, options: dict[str, int]) -> PacsPostgresqlDatabase:
    """libpq reads the URI itself: every parameter it knows is honoured, others refused."""
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn

    try:
        params = parse_dsn(uri)
    except ProgrammingError as exc:
        message = redact(str(exc), uri).strip()
        # from None: the driver's message, in the chained traceback, may show the password
        raise ValueError(f"invalid PostgreSQL URL {display_url(uri)}: {message}") from None
    # libpq's own default database name (peewee needs one)
    name = (
        params.get("dbname")
        or os.environ.get("PGDATABASE")
        or params.get("user")
        or os.environ.get("PGUSER")
        or getpass.getuser()
    )
    return PacsPostgresqlDatabase(
        name,
        dsn=uri,
        max_connections=options.get("max_connections", DEFAULT_MAX_CONNECTIONS["postgresql"]),
        stale_timeout=300,
        timeout=POOL_WAIT_SECONDS,
    )


def bind_database(url: str, home: Path | None = None):
    database = make_database(url, home)
    db.initialize(database)
    return database


def is_sqlite() -> bool:
    return isinstance(db.obj, PooledSqliteDatabase)


class WriterKind(enum.Enum):
    """Who opens a write transaction (:func:`write_transaction`)."""

    # the C-STORE path: its commit does not wait for the disk (the ``.ready`` journal
    # of its file redoes a commit lost to a power loss), and it queues as a store
    STORE = "store"
    # every other writer: a commit that waits for the disk
    OTHER = "other"


@contextmanager
def write_transaction(kind: WriterKind = WriterKind.OTHER):
    """A transaction that takes the write lock up front on SQLite.

    With a deferred transaction two SQLite writers may both read and then
    deadlock on the upgrade; IMMEDIATE makes the second one wait instead.

    ``kind=WriterKind.STORE`` commits without waiting for the disk (SQLite
    ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): the commit
    survives a crash of the process, and a power loss once
    :func:`make_commits_durable` has run after it.  Only the C-STORE path may
    ask for it (it keeps a journal of its files until then); the SQLite
    writers' queue also tells a store from other writers by it.
    """
    database = db.obj
    store = kind is WriterKind.STORE
    if not is_sqlite():
        with database.atomic():
            if store:
                database.execute_sql("SET LOCAL synchronous_commit TO OFF")
            yield
        return
    outermost = not database.in_transaction()
    with (
        _sqlite_writers.queue(database.database, BUSY_TIMEOUT_SECONDS, store=store)
        if outermost
        else nullcontext()
    ):
        # per connection, and only outside a transaction: back to FULL for the next user
        # (on the sqlite3 connection itself: through peewee, a C-STORE's 2% of CPU)
        relaxed = database.connection() if store and outermost else None
        if relaxed is not None:
            relaxed.execute("PRAGMA synchronous = NORMAL")
        try:
            with database.atomic("IMMEDIATE"):
                yield
        finally:
            if relaxed is not None:
                relaxed.execute("PRAGMA synchronous = FULL")


# the first byte of the lock file while a writer other than a C-STORE holds the lock
# (any other byte: a C-STORE holds it); set and cleared by those writers only, so
# that the C-STORE path pays no write for it
OTHER_HOLDS, NO_OTHER = b"O", b"-"


class _SqliteWriterQueue:
    """Writers of one SQLite database queue on a lock that wakes the next one at once.

    SQLite's own wait for its write lock (busy timeout) polls: it sleeps 1, 2,
    5, 10... ms between tries, so that with several processes storing, a
    transaction of a fraction of a millisecond often cost its waiters a
    millisecond or more of idle time.  Here ``write_transaction`` first takes a
    lock of its process (threads) and then ``flock(2)`` on ``<database>-writers``
    (processes), whose waiters the kernel wakes as soon as it is released (and
    releases if its holder dies).  Writers that do not queue (plain
    transactions) still meet SQLite's own lock, which stays what protects the
    data.
    """

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self._files: dict[str, int] = {}  # database path -> its lock file, open
        # when a store of this process last queued behind a store of another process
        self.store_waited_at = float("-inf")
        # a fork copies the lock as another thread may hold it: the child starts afresh
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._thread_lock = threading.Lock()
        # the parent's open lock files: closing the child's copies releases no lock
        # the parent holds (flock(2) locks go with the last descriptor of an open file)
        for fd in self._files.values():
            with suppress(OSError):
                os.close(fd)
        self._files = {}

    @contextmanager
    def queue(self, path: str, timeout: float, store: bool = False):
        if not self._thread_lock.acquire(timeout=timeout):
            raise OperationalError("database is locked")  # SQLite's words for it
        try:
            fd = self._lock_file(path)
            if fd is None:  # an in-memory database, or no lock file possible: SQLite waits
                yield
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if store and os.pread(fd, 1, 0) != OTHER_HOLDS:
                    self.store_waited_at = time.monotonic()
                # its holder is inside a transaction, which SQLite's timeout bounds
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if not store:
                    _hint(fd, OTHER_HOLDS)
                yield
            finally:
                if not store:
                    _hint(fd, NO_OTHER)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _lock_file(self, path: str) -> int | None:
        fd = self._files.get(path)
        if fd is not None:
            return fd
        if path in ("", ":memory:") or path.startswith("file:"):
            return None
        # opened per process (see _forget): flock does not exclude holders of one open file
        try:
            fd = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        self._files[path] = fd
        return fd


def _hint(fd: int, byte: bytes) -> None:
    with suppress(OSError):  # only a hint (a full disk refuses even one byte)
        os.pwrite(fd, byte, 0)


_sqlite_writers = _SqliteWriterQueue()


def stores_queued_within(seconds: float) -> bool:
    """Whether a C-STORE of this process had to wait for the SQLite write lock held by
    a C-STORE of another process in the last ``seconds`` (never on PostgreSQL, whose
    writers do not queue)."""
    return time.monotonic() - _sqlite_writers.store_waited_at < seconds


def make_commits_durable() -> None:
    """Bring every commit made so far, synchronous or not, to the disk.

    SQLite (WAL): fsync the write-ahead log, which holds every commit not yet
    checkpointed (a checkpoint syncs the database file itself).  PostgreSQL:
    one synchronous commit, which flushes the WAL up to it.
    """
    database = db.obj
    if is_sqlite():
        try:
            fd = os.open(database.database + "-wal", os.O_RDONLY)
        except FileNotFoundError:  # no WAL: every commit is in the synced database
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    with connection(), database.atomic():
        database.execute_sql("SELECT txid_current()")


@contextmanager
def connection(lazy: bool = False):
    """Use the thread's connection, opening (and afterwards closing) it only if needed.

    Unlike peewee's ``connection_context`` it nests: an inner block never
    closes a connection that an outer block (or a transaction) is using.
    ``lazy``: take one only if the block queries (peewee connects on the first
    query), and give back at the end whatever the block took: for code that
    seldom queries (cached settings and rights) and must not keep a connection.
    """
    owner = threading.get_ident()
    opened = db.is_closed()
    if opened and not lazy:
        db.connect()
    try:
        yield
    finally:
        # a generator suspended in this block and finalised by the garbage collector
        # runs this in another thread, whose connection is not the block's (the
        # block's goes back when its own thread ends: ThreadBoundPool)
        if opened and threading.get_ident() == owner and not db.is_closed():
            db.close()


# -- health -------------------------------------------------------------------------------

# how long the health check waits for a connection and an answer
HEALTH_TIMEOUT_SECONDS = 2.0
# a query on one of our tables (models.SchemaVersion), as peewee writes it
HEALTH_QUERY = 'SELECT "t1"."version" FROM "schemaversion" AS "t1"'


def check_database(timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Take a connection from this process's pool and query a table, within ``timeout``.

    Returns ``{"status": "ok", "latency_ms": ..., "connections": {...}}``, or
    ``"status": "failing"`` with ``failed`` (``connection``: none could be
    taken, from the pool or the server; ``query``: the query failed or did
    not answer) and ``error``.  The work runs in a thread of its own, so that
    the caller gets an answer in time even from a database that hangs; while
    one still runs, the next call reports what it is waiting for.
    """
    database = db.obj
    if not database.health_check_running.acquire(blocking=False):
        part = database.health_progress["part"]
        waiting = "a connection" if part == "connection" else "an answer"
        return _failing(database, part, f"the previous check still waits for {waiting}")
    database.health_progress = progress = {"part": "connection"}
    checker = threading.Thread(
        target=_check_database, args=(database, progress), name="pacscore-health", daemon=True
    )
    checker.start()
    checker.join(timeout)
    if "latency_ms" in progress:
        return {
            "status": "ok",
            "latency_ms": progress["latency_ms"],
            "connections": database.usage(),
        }
    if "error" in progress:
        return _failing(database, progress["part"], progress["error"])
    if progress["part"] == "connection":
        return _failing(database, "connection", f"no connection within {timeout:g} s")
    return _failing(database, "query", f"no answer within {timeout:g} s")


def _failing(database: ThreadBoundPool, part: str, error: str) -> dict[str, Any]:
    usage = database.usage()
    if part == "connection":
        error += f" ({usage['in_use']} of {usage['max']} in use in this process)"
    return {"status": "failing", "failed": part, "error": error, "connections": usage}


def _check_database(database: ThreadBoundPool, progress: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        with connection():
            progress["part"] = "query"
            if is_sqlite():
                db.execute_sql(HEALTH_QUERY).fetchone()
            else:
                with db.atomic():  # the caller stops waiting: PostgreSQL stops too, later
                    db.execute_sql("SET LOCAL statement_timeout = 10000")
                    db.execute_sql(HEALTH_QUERY).fetchone()
        progress["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        lines = str(exc).strip().splitlines()
        progress["error"] = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    finally:
        database.health_check_running.release()
