"""`reverie serve --check --database postgresql://...` on a real PostgreSQL server (issue 21).

As for the SQLite file (tests/test_server_durability.py): a clean gallery passes (exit 0); a row
whose file is gone and a file without its row are listed (exit 1). On a server: a database that
does not answer is reported naming its URL with the password hidden (exit 1), the migration is
given against the newest, and one made by a newer reverie fails the check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_jobs_celery import SRC
from test_server_durability import png, small_gallery

NEWEST = "0004_seed_64_bit"


def serve_check(data: Path, database: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("REVERIE_")} | {"PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "reverie", "serve", "--check", "--data", str(data), "--database", database],
                          capture_output=True, text=True, env=env, timeout=120)


def sql(database: str, statement: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(database, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_serve_check_on_postgresql_passes_a_clean_gallery_and_lists_missing_and_orphan_files(tmp_path, postgres_url):
    data = tmp_path / "studio"
    job = small_gallery(data, postgres_url)
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")  # as a user writes it
    check = serve_check(data, plain)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "answers (PostgreSQL" in check.stdout and "pictures: 2 rows, 2 files" in check.stdout
    assert f"migration: {NEWEST}, the newest" in check.stdout and "all is well" in check.stdout

    pictures = data / "images" / "1"
    (pictures / f"{job.id}-0.png").unlink()  # a row without its file
    (pictures / "stray.png").write_bytes(png())  # a file without its row
    check = serve_check(data, postgres_url)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"images/1/{job.id}-0.png" in check.stdout and "images/1/stray.png" in check.stdout
    assert "1 row(s) without their file" in check.stdout and "1 file(s) without a row" in check.stdout
    assert "problems found" in check.stdout


def test_serve_check_on_postgresql_reports_the_migration_and_a_database_it_cannot_read(tmp_path, postgres_url,
                                                                                       postgres_session_server):
    data = tmp_path / "studio"
    small_gallery(data, postgres_url)
    sql(postgres_url, "UPDATE alembic_version SET version_num = '0003_image_index'")
    check = serve_check(data, postgres_url)
    assert check.returncode == 0 and f"migration: 0003_image_index, behind the newest {NEWEST}" in check.stdout, check.stdout
    sql(postgres_url, "UPDATE alembic_version SET version_num = '0099_from_the_future'")
    check = serve_check(data, postgres_url)
    assert check.returncode == 1 and "unknown to this version of reverie" in check.stdout, check.stdout
    sql(postgres_url, f"UPDATE alembic_version SET version_num = '{NEWEST}'")

    # No server there: the URL named, its password hidden.
    unreachable = "postgresql://reverie:s3cret-pw@127.0.0.1:1/reverie"
    check = serve_check(data, unreachable)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "cannot read the gallery database postgresql+psycopg://reverie:***@127.0.0.1:1/reverie" in check.stdout
    assert "s3cret-pw" not in check.stdout + check.stderr

    # A database on the server without a gallery in it.
    empty = postgres_session_server.new_database()
    try:
        check = serve_check(data, empty)
        assert check.returncode == 1 and "has no gallery in it" in check.stdout, check.stdout + check.stderr
    finally:
        postgres_session_server.drop_database(empty)
