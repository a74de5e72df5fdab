"""The gallery on PostgreSQL (issue 21): exact credits from several processes, the same migrations,
and `reverie serve --database URL` serving a job end to end. Every PostgreSQL here is a real
server the test session started (tests/servers.py); without PostgreSQL installed these skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reverie
from reverie.errors import ReverieError
from test_server_durability import PATIENCE, TINY, ServeProcess, finished  # noqa: F401

SRC = Path(reverie.__file__).resolve().parents[1]

# One process: N threads each try to queue a job costing 1 credit; prints how many were taken.
SPENDER = textwrap.dedent("""
    import json, sys, threading
    from reverie.gallery.store import Gallery, NoCredit

    folder, database, user_id, tries = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), int(sys.argv[4])
    gallery = Gallery(folder, database=database)
    outcomes, ready = [], threading.Barrier(tries)

    def spend():
        ready.wait()
        try:
            gallery.add_job(user_id, "generate", {}, capacity=1000, cost=1, monthly=7)
            outcomes.append("ok")
        except NoCredit:
            outcomes.append("refused")

    print("ready", flush=True)
    sys.stdin.readline()  # both processes start spending at once
    threads = [threading.Thread(target=spend) for _ in range(tries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(outcomes), flush=True)
""")


def test_thirty_charges_against_seven_credits_from_two_processes_take_exactly_seven(tmp_path, gallery_database):
    from reverie.gallery.store import Gallery

    folder = tmp_path / "g"
    gallery = Gallery(folder, database=gallery_database)
    user = gallery.add_user("dee", "pw")
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    spenders = [subprocess.Popen([sys.executable, "-c", SPENDER, str(folder), gallery_database or "", str(user.id), "15"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    try:
        for spender in spenders:
            assert spender.stdout.readline().strip() == "ready", spender.stderr.read()
        for spender in spenders:
            spender.stdin.write("go\n")
            spender.stdin.flush()
        outcomes = []
        for spender in spenders:
            out, err = spender.communicate(timeout=PATIENCE)
            assert spender.returncode == 0, err
            outcomes += json.loads(out.strip().splitlines()[-1])
    finally:
        for spender in spenders:
            if spender.poll() is None:
                spender.kill()
    assert len(outcomes) == 30
    assert outcomes.count("ok") == 7 and outcomes.count("refused") == 23
    assert gallery.balance(user.id) == 0
    reasons = [entry.reason for entry in gallery.ledger(user.id)]
    assert reasons.count("monthly") == 1 and reasons.count("charge") == 7


def test_a_seed_past_two_to_the_31_is_kept(tmp_path, gallery_database):
    from PIL import Image

    from reverie.gallery.store import Gallery
    from reverie.request import MAX_SEED

    gallery = Gallery(tmp_path / "g", database=gallery_database)
    user = gallery.add_user("ann")
    job = gallery.add_job(user.id, "generate", {}, capacity=10)
    picture = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(picture)
    gallery.add_image(job, 0, picture, "x", MAX_SEED, {})
    assert [image.seed for image in gallery.job_images(job)] == [MAX_SEED]


def test_postgres_urls_use_psycopg_and_other_databases_are_refused_by_name():
    from reverie.gallery.db import database_url

    assert database_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg://u:p@h:5432/d"
    assert database_url("postgres://h/d") == "postgresql+psycopg://h/d"
    assert database_url("/x/gallery.sqlite") == "sqlite:////x/gallery.sqlite"
    with pytest.raises(ReverieError, match="SQLite or PostgreSQL, not 'mysql'"):
        database_url("mysql://h/d")


def test_an_unreachable_database_is_one_line_naming_the_flag_without_the_password(tmp_path):
    pytest.importorskip("psycopg")
    from servers import free_port

    from reverie.gallery.store import Gallery

    with pytest.raises(ReverieError) as caught:
        Gallery(tmp_path / "g", database=f"postgresql://ann:secret-pw@127.0.0.1:{free_port()}/reverie")
    message = str(caught.value)
    assert "cannot reach the gallery database" in message and "--database" in message and "secret-pw" not in message


def test_reverie_serve_on_postgresql_serves_a_job_end_to_end(tmp_path, postgres_url):
    """`reverie serve --database URL`: the job's rows are in PostgreSQL, its picture in --data; a
    second server on the same database (REVERIE_DATABASE) sees the same gallery."""
    import psycopg

    data = tmp_path / "studio"
    server = ServeProcess(data, "--database", postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    job = server.post("/api/v1/jobs", {"prompt": "red apple", "n_samples": 1, "seed": 3, "steps": 2, **TINY})
    done = finished(server, job["id"])
    assert done["status"] == "done", server.output()
    assert not (data / "gallery.sqlite").exists()
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        rows = connection.execute("SELECT file, seed FROM images WHERE job_id = %s", (job["id"],)).fetchall()
    assert len(rows) == 1 and rows[0][1] == 3 and (data / "images" / rows[0][0]).is_file()
    server.terminate()

    os.environ["REVERIE_DATABASE"] = postgres_url
    try:
        again = ServeProcess(tmp_path / "studio")
    finally:
        del os.environ["REVERIE_DATABASE"]
    assert [image["id"] for image in again.get(f"/api/v1/jobs/{job['id']}")["images"]] == \
        [image["id"] for image in done["images"]]
    assert not (data / "gallery.sqlite").exists()
