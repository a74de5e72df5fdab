"""Real database and broker servers for tests: PostgreSQL and Redis, each in a temp folder on a free
local port, started by the test session and stopped after it. No mocks.

Debian's packages provide them (`make test` installs `postgresql` and `redis-server` with apt-get);
a test that needs one is skipped, with the reason, when its binaries are absent:

    postgres_url   a fresh, empty database on the session's PostgreSQL server (one per test)
    redis_url      a freshly flushed database index on the session's redis-server (one per test)

and `postgres_server()` / `redis_server()`, context managers for a test that needs its own server
(to stop or kill it). PostgreSQL's binaries are looked for under /usr/lib/postgresql/*/bin/
(Debian's, newest version first), then on PATH. initdb refuses to run as root: as root, the server
runs as the `postgres` user the Debian package creates, in a folder handed over to that user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PATIENCE = 60.0  # seconds a server may take to accept connections
POSTGRES_USER = "postgres"  # who runs the server when the tests run as root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _version_key(folder: str) -> tuple:
    version = Path(folder).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def postgres_bin() -> Path | None:
    """The folder with Debian's initdb, pg_ctl and postgres (newest version), else PATH's; None if absent."""
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for folder in folders:
        if all(os.access(Path(folder) / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    return None


def redis_bin() -> Path | None:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)
    return Path(found) if found else None


def postgres_missing() -> str:
    """Why PostgreSQL tests cannot run here ('' when they can)."""
    if postgres_bin() is None:
        return ("PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH): "
                "run `make test` as root, or `sudo apt-get install postgresql`")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            return (f"running as root and there is no {POSTGRES_USER!r} user to run PostgreSQL as (initdb refuses "
                    "root): install Debian's postgresql package, which creates it")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -r requirements.txt"
    return ""


def redis_missing() -> str:
    if redis_bin() is None:
        return "redis-server is not installed: run `make test` as root, or `sudo apt-get install redis-server`"
    return ""


def wait_for(check, what: str, patience: float = 600.0):
    """Poll `check()` until it returns something true and return that; fail naming `what` if it never does."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _wait(check, what: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {PATIENCE:.0f} s\n{tail}")


# -- PostgreSQL ----------------------------------------------------------------------------------
@dataclass
class PostgresServer:
    """A running PostgreSQL server: superuser `reverie`, trust authentication, on 127.0.0.1:`port`."""

    folder: Path
    port: int
    user: str = "reverie"
    _names: itertools.count = field(default_factory=itertools.count)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database, autocommit=True)

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL (postgresql+psycopg://...)."""
        name = name or f"test_{os.getpid()}_{next(self._names)}"
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by new_database, closing the connections still open to it."""
        name = url.rsplit("/", 1)[1]
        with self.connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    return [runuser, "-u", POSTGRES_USER, "--", *command] if runuser else ["su", POSTGRES_USER, "-s", "/bin/sh", "-c",
                                                                           " ".join(map(_quote, command))]


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


@contextmanager
def postgres_server():
    """Start a PostgreSQL server in a new temp folder on a free port; stop it and remove the folder after.

    The folder is made with tempfile (not pytest's tmp_path, which only root may enter) and, when
    running as root, handed to the `postgres` user that runs the server."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="reverie-pg-"))
    data, log = folder / "data", folder / "server.log"
    if os.geteuid() == 0:
        account = pwd.getpwnam(POSTGRES_USER)
        os.chown(folder, account.pw_uid, account.pw_gid)
    server = None
    try:
        subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "reverie", "--auth=trust",
                                        "--no-sync", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True, timeout=120)
        for attempt in range(5):
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                       "-c shared_buffers=32MB")
            started = subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log),
                                                      "-o", options, "-w", "-t", str(int(PATIENCE)), "start"]),
                                     capture_output=True, text=True, timeout=PATIENCE + 10)
            if started.returncode == 0:
                server = PostgresServer(folder, port)
                break
            if "already in use" not in log.read_text(errors="replace"):
                raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n{log.read_text(errors='replace')[-2000:]}")
        if server is None:
            raise RuntimeError("PostgreSQL found no free port in 5 tries")
        yield server
    finally:
        if server is not None:
            subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


# -- Redis ---------------------------------------------------------------------------------------
@dataclass
class RedisServer:
    folder: Path
    port: int
    process: subprocess.Popen
    _indexes: itertools.count = field(default_factory=itertools.count)

    def url(self, index: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{index}"

    def command(self, *words: str) -> bytes:
        """Send one command (RESP) and return the first reply line: no client library needed."""
        payload = f"*{len(words)}\r\n".encode() + b"".join(f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(payload)
            return connection.recv(65536).split(b"\r\n", 1)[0]

    def new_database(self) -> str:
        """The next of redis's 16 database indexes, flushed, as a URL."""
        index = next(self._indexes) % 16
        if not self._flush(index):
            raise RuntimeError(f"redis-server on port {self.port} did not flush its database {index}")
        return self.url(index)

    def _flush(self, index: int) -> bool:
        payload = (f"*2\r\n$6\r\nSELECT\r\n${len(str(index))}\r\n{index}\r\n" "*1\r\n$7\r\nFLUSHDB\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(payload)
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.count(b"+OK") == 2

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def redis_server(port: int | None = None):
    """Start redis-server (no persistence) in a new temp folder on a free port (or on `port`: to
    start one again where a stopped one was); shut it down after."""
    reason = redis_missing()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="reverie-redis-"))
    log = folder / "redis.log"
    server = None
    try:
        for attempt in range(1 if port else 5):
            chosen = port or free_port()
            process = subprocess.Popen([str(redis_bin()), "--port", str(chosen), "--bind", "127.0.0.1", "--dir", str(folder),
                                        "--save", "", "--appendonly", "no", "--logfile", str(log),
                                        "--daemonize", "no", "--protected-mode", "no"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            candidate = RedisServer(folder, chosen, process)

            def answers() -> bool:
                try:
                    return candidate.command("PING") == b"+PONG"
                except OSError:
                    return False

            try:
                _wait(answers, "redis-server", process, log)
            except RuntimeError:
                candidate.kill()
                if "Address already in use" in (log.read_text(errors="replace") if log.exists() else ""):
                    continue
                raise
            server = candidate
            break
        if server is None:
            raise RuntimeError("redis-server found no free port in 5 tries" if not port else f"port {port} is taken")
        yield server
    finally:
        if server is not None:
            try:
                server.command("SHUTDOWN", "NOSAVE")
            except OSError:
                pass
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(folder, ignore_errors=True)


# -- fixtures (conftest.py imports them) -----------------------------------------------------------
STARTED: list[subprocess.Popen] = []  # processes a test started (`reverie serve`, workers): killed when it ends


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def postgres_session_server():
    """One PostgreSQL server for the test session (per xdist worker)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_session_server) -> str:
    """A fresh, empty database of its own for this test: postgresql+psycopg://reverie@127.0.0.1:PORT/NAME
    (dropped after the test, with the connections the test left open)."""
    url = postgres_session_server.new_database()
    yield url
    postgres_session_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def gallery_database(request) -> str | None:
    """The gallery's database, once each way: None (the gallery folder's SQLite file, the default)
    and a fresh PostgreSQL database's URL (skipped when PostgreSQL is not installed)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis_session_server():
    """One redis-server for the test session (per xdist worker)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_session_server) -> str:
    """A flushed database index of its own for this test: redis://127.0.0.1:PORT/N."""
    return redis_session_server.new_database()


__all__ = ["PostgresServer", "RedisServer", "free_port", "gallery_database", "postgres_bin", "postgres_missing", "postgres_server",
           "postgres_session_server", "postgres_url", "redis_bin", "redis_missing", "redis_server",
           "redis_session_server", "redis_url"]
