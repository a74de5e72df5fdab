"""`reverie serve --check`: the gallery database and its picture files, checked against each other.

Only reads: the database through a read-only connection (no migration), the files by listing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .db import DATABASE_FILE, BrokenDatabase, check_database_file
from .items import files_of

SHOWN = 10  # paths listed per kind of problem; the rest are counted


@dataclass
class GalleryCheck:
    database: Path
    damage: str = ""  # why the database cannot be read, when it cannot
    rows: int = 0
    files: int = 0
    missing: list[str] = field(default_factory=list)  # rows whose file is gone
    orphans: list[str] = field(default_factory=list)  # files (and unfinished writes) without a row

    @property
    def ok(self) -> bool:
        return not (self.damage or self.missing or self.orphans)

    def lines(self) -> list[str]:
        """The report, a few short lines."""
        if self.damage:
            return [f"database: {self.damage}"]
        report = [f"database {self.database}: whole (quick_check ok)",
                  f"pictures: {self.rows} rows, {self.files} files"]
        for paths, what in ((self.missing, "row(s) without their file"), (self.orphans, "file(s) without a row")):
            if paths:
                report.append(f"{len(paths)} {what}:")
                report += [f"  {path}" for path in paths[:SHOWN]]
                report += [f"  ... and {len(paths) - SHOWN} more"] if len(paths) > SHOWN else []
        report.append("all is well" if self.ok else "problems found")
        return report


def check_gallery(folder: str | Path) -> GalleryCheck:
    """Check the database in `folder` (header, quick_check, foreign keys) and its pictures: every
    row has its files under images/ (a video's poster too), every file there has its row."""
    folder = Path(folder)
    path = folder / DATABASE_FILE
    report = GalleryCheck(path)
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
    finally:
        connection.close()
    if broken_links:
        report.damage = f"{path}: {len(broken_links)} row(s) point at rows that do not exist (PRAGMA foreign_key_check)"
        return report
    images = folder / "images"
    on_disk = {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()} if images.is_dir() else set()
    owned = {name for file in files for name in files_of(file)}
    report.rows, report.files = len(files), len(on_disk)
    report.missing = sorted(f"images/{name}" for name in owned - on_disk)
    report.orphans = sorted(f"images/{name}" for name in on_disk - owned)
    return report
