"""`reverie serve --check`: the gallery database and its picture files, checked against each other.

Only reads: the database through a read-only connection (no migration), the files by listing.
The database is the SQLite file in the gallery's folder (header, quick_check, foreign keys), or a
server's (`--database postgresql://...`: it must answer; the server keeps its own constraints).
Either way the report gives the database's migration (Alembic revision) against the newest this
version of reverie knows, and compares the pictures' rows with the files under images/.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .db import DATABASE_FILE, MIGRATIONS, BrokenDatabase, check_database_file, database_url, describe
from .items import files_of

SHOWN = 10  # paths listed per kind of problem; the rest are counted


@dataclass
class GalleryCheck:
    database: Path | str  # the SQLite file, or the server database's URL (its password hidden)
    damage: str = ""  # why the database cannot be read, when it cannot
    health: str = "whole (quick_check ok)"  # what the database's own check said
    revision: str | None = None  # its Alembic revision (None: none recorded)
    newest: str | None = None  # the newest revision this version knows
    rows: int = 0
    files: int = 0
    missing: list[str] = field(default_factory=list)  # rows whose file is gone
    orphans: list[str] = field(default_factory=list)  # files (and unfinished writes) without a row

    @property
    def too_new(self) -> bool:
        """Migrated by a newer version of reverie than this one (its revision unknown here)."""
        return self.revision is not None and self.revision not in known_revisions()

    @property
    def ok(self) -> bool:
        return not (self.damage or self.missing or self.orphans or self.too_new)

    def migration(self) -> str:
        if self.revision is None:
            return f"migration: none recorded (newest {self.newest}); a server started on it migrates it"
        if self.revision == self.newest:
            return f"migration: {self.revision}, the newest"
        if self.too_new:
            return (f"migration: {self.revision}, unknown to this version of reverie (newest here {self.newest}): "
                    "a newer version migrated it; upgrade reverie")
        return f"migration: {self.revision}, behind the newest {self.newest}; a server started on it migrates it"

    def lines(self) -> list[str]:
        """The report, a few short lines."""
        if self.damage:
            return [f"database: {self.damage}"]
        report = [f"database {self.database}: {self.health}", self.migration(),
                  f"pictures: {self.rows} rows, {self.files} files"]
        for paths, what in ((self.missing, "row(s) without their file"), (self.orphans, "file(s) without a row")):
            if paths:
                report.append(f"{len(paths)} {what}:")
                report += [f"  {path}" for path in paths[:SHOWN]]
                report += [f"  ... and {len(paths) - SHOWN} more"] if len(paths) > SHOWN else []
        report.append("all is well" if self.ok else "problems found")
        return report


def known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


def newest_revision() -> str:
    return _scripts().get_current_head()


def _scripts():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def check_gallery(folder: str | Path, database: str | None = None) -> GalleryCheck:
    """Check the gallery's database (the SQLite file in `folder`, or the server at `database`) and
    its pictures: every row has its files under images/ (a video's poster too), every file there
    has its row."""
    folder = Path(folder)
    if database and "://" in database and not database_url(database).startswith("sqlite"):
        return _check_server(folder, database_url(database))
    if database:  # a SQLite file named by path or sqlite:/// URL
        return _check_sqlite(folder, Path(database_url(database).removeprefix("sqlite:///")))
    return _check_sqlite(folder, folder / DATABASE_FILE)


def _check_sqlite(folder: Path, path: Path) -> GalleryCheck:
    report = GalleryCheck(path, newest=newest_revision())
    if not path.exists():
        report.damage = f"{path} does not exist (a server started here makes an empty gallery)"
        return report
    try:
        check_database_file(path)
    except BrokenDatabase as exc:
        report.damage = str(exc)
        return report
    wal = Path(f"{path}-wal").exists()
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro" + ("" if wal else "&immutable=1"), uri=True)
    try:
        broken_links = connection.execute("PRAGMA foreign_key_check").fetchall()
        files = [row[0] for row in connection.execute("SELECT file FROM images")]
        try:
            report.revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        except (sqlite3.OperationalError, TypeError):  # no table, or no row: no migration recorded
            report.revision = None
    finally:
        connection.close()
    if broken_links:
        report.damage = f"{path}: {len(broken_links)} row(s) point at rows that do not exist (PRAGMA foreign_key_check)"
        return report
    return _compare_files(report, folder, files)


def _check_server(folder: Path, url: str) -> GalleryCheck:
    """The gallery's rows on a database server (PostgreSQL), read in a read-only transaction."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    shown = describe(url)
    report = GalleryCheck(shown, newest=newest_revision())
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            version = connection.exec_driver_sql("SHOW server_version").scalar()
            tables = set(connection.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").scalars())
            if not {"images", "alembic_version"} <= tables:
                report.damage = (f"{shown} has no gallery in it (no images or alembic_version table): is --database "
                                 "the one the servers use? (a server started on it makes an empty gallery)")
                return report
            files = list(connection.execute(text("SELECT file FROM images")).scalars())
            report.revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        password = engine.url.password
        if password:
            reason = reason.replace(str(password), "***")
        report.damage = (f"cannot read the gallery database {shown}: {reason}; check --database (or REVERIE_DATABASE) "
                         "and that the server is running")
        return report
    except SQLAlchemyError as exc:
        report.damage = f"cannot read the gallery database {shown}: {type(exc).__name__}"
        return report
    finally:
        engine.dispose()
    report.health = f"answers (PostgreSQL {version}; its constraints are the server's)"
    return _compare_files(report, folder, files)


def _compare_files(report: GalleryCheck, folder: Path, files: list[str]) -> GalleryCheck:
    images = folder / "images"
    on_disk = {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()} if images.is_dir() else set()
    owned = {name for file in files for name in files_of(file)}
    report.rows, report.files = len(files), len(on_disk)
    report.missing = sorted(f"images/{name}" for name in owned - on_disk)
    report.orphans = sorted(f"images/{name}" for name in on_disk - owned)
    return report
