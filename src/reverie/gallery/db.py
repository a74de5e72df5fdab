"""Opening the gallery database: SQLite by default, checked, then migrated to the newest schema.

Writes start with BEGIN IMMEDIATE, so two writers never both read a balance and then both spend
it: the second waits until the first has committed. Reads start with a plain (deferred) BEGIN:
in WAL mode they see a snapshot and never wait for, or hold, the write lock.

On PostgreSQL (`postgresql://...`, any number of processes and machines sharing it), a write
transaction takes the same one write lock first: `pg_advisory_xact_lock(WRITE_LOCK)`, held by the
database server until that transaction commits or rolls back (a process that dies loses it with
its connection). Transactions are READ COMMITTED, so every statement after the lock sees what
the writer before committed; reads take no lock and see a snapshot (MVCC), as on SQLite in WAL.

A database file that exists but is not a whole SQLite database is refused before anything
writes to it (SQLite would take a 0-byte file for an empty database and start afresh).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ReverieError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DATABASE_FILE = "gallery.sqlite"  # in the gallery's folder
SQLITE_MAGIC = b"SQLite format 3\x00"
# Every thread that may read at once gets a connection instead of waiting in the pool: the
# server's thread pool (anyio's 40 threads), the job runner and the command line. WAL readers do
# not block each other, and writers queue on SQLite's own lock (busy_timeout), not in the pool.
POOL_SIZE, POOL_OVERFLOW = 8, 56
# A database server counts connections against its max_connections (PostgreSQL's default: 100):
# each process holds at most POOL_SIZE idle ones, and opens up to SERVER_OVERFLOW more when busy.
SERVER_OVERFLOW = 24
# The key of the gallery's write lock on PostgreSQL (an advisory lock: any 64-bit number that
# nothing else sharing the database uses). "reverie\0" in ASCII.
WRITE_LOCK = 0x7265766572696500


class BrokenDatabase(ReverieError):
    """The gallery database file exists but cannot be read as a whole SQLite database."""

    def __init__(self, path: Path, what: str):
        self.path = path
        super().__init__(f"the gallery database {path} {what}; restore it from a backup, "
                         "or move it aside to start with an empty gallery")


def check_database_file(path: str | Path) -> None:
    """Raise BrokenDatabase unless `path` is missing (a fresh start) or a whole SQLite database.

    Only reads: the header's magic and size, then `PRAGMA quick_check` on a read-only
    connection (immutable when there is no WAL to replay, so not even a -shm file is made)."""
    path = Path(path)
    if not path.exists():
        return
    size = path.stat().st_size
    with path.open("rb") as file:
        header = file.read(100)
    if size == 0:
        raise BrokenDatabase(path, "is empty (0 bytes)")
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise BrokenDatabase(path, "is not an SQLite database")
    wal = Path(f"{path}-wal")
    if not wal.exists():
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        counted = header[24:28] == header[92:96]  # the header's page count is valid
        if counted and page_size and size < pages * page_size:
            raise BrokenDatabase(path, f"is truncated ({size} of {pages * page_size} bytes)")
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if wal.exists() else "&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BrokenDatabase(path, f"is damaged ({exc})") from None
    if problems != ["ok"]:
        raise BrokenDatabase(path, f"is damaged ({problems[0]})")


class Sessions:
    """The gallery's sessions: `sessions()` reads (a deferred BEGIN), `sessions.begin()` writes
    (one BEGIN IMMEDIATE transaction, committed at the end of the `with`)."""

    def __init__(self, engine: Engine):
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(immediate=True), expire_on_commit=False)

    def __call__(self) -> Session:
        return self._read()

    def begin(self) -> AbstractContextManager[Session]:
        return self._write.begin()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let SQLAlchemy's begin below start transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        immediate = connection.get_execution_options().get("immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _postgres_write_lock(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        if connection.get_execution_options().get("immediate", False):
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")


def database_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL for a file path or a URL; postgres:// and postgresql:// use psycopg (3).

    Raises ReverieError for a URL of a database the gallery does not run on."""
    url = str(url_or_path)
    if "://" not in url:
        return f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite":
        return url
    raise ReverieError(f"the gallery runs on SQLite or PostgreSQL, not {scheme!r}: give a database URL "
                       "like postgresql://user:password@host:5432/reverie, or none for the gallery folder's SQLite file")


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.execution_options(immediate=True).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url_or_path: str | Path) -> tuple[Engine, Sessions]:
    """An engine and the sessions for a SQLite file or a database URL (SQLite, PostgreSQL), checked and migrated.

    Raises BrokenDatabase, before writing anything, when the file is not a whole database, and
    ReverieError when a database server cannot be reached."""
    options = {}
    if "://" not in str(url_or_path):
        check_database_file(url_or_path)
        Path(url_or_path).parent.mkdir(parents=True, exist_ok=True)
        options = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    url = database_url(url_or_path)
    if url.startswith("postgresql"):
        options = {"pool_size": POOL_SIZE, "max_overflow": SERVER_OVERFLOW, "pool_pre_ping": True,
                   "isolation_level": "READ COMMITTED"}
    engine = create_engine(url, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {}, **options)
    if url.startswith("sqlite"):
        _sqlite_pragmas(engine)
    elif url.startswith("postgresql"):
        _postgres_write_lock(engine)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        if url.startswith("sqlite"):
            raise
        raise ReverieError(f"cannot reach the gallery database {describe(url)}: {str(exc.orig).strip().splitlines()[0]}; "
                           "check --database (or REVERIE_DATABASE) and that the server is running") from None
    return engine, Sessions(engine)
