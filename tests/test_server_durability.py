"""The studio server under load, stops and crashes: waiting requests hold up no one, a stopped or
killed server resumes its jobs without doubling a picture, a broken database is refused untouched.

Servers here are real: uvicorn in a thread, or `reverie serve` in a process of its own (stopped
with SIGTERM, or killed with SIGKILL, at points named by the REVERIE_CRASH_AT test hook).
Nothing is timed: the tests wait for events (a job running, a picture made) and check their order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import reverie
from reverie.outputs.video import video_info
from servers import STARTED, wait_for
from reverie.server.app import create_app
from reverie.server.config import ServerConfig

SRC = Path(reverie.__file__).resolve().parents[1]  # the reverie under test, for `reverie serve` processes
TINY = {"width": 64, "height": 64}
PATIENCE = 600  # seconds to wait for an event before calling the test failed (never an assertion on time)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]




def png(colour=(200, 30, 30), size=64, alpha_from: int | None = None) -> bytes:
    array = np.zeros((size, size, 4), np.uint8)
    array[..., :3], array[..., 3] = colour, 255
    if alpha_from is not None:
        array[:, alpha_from:, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(array, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


class ThreadServer:
    """The studio app on uvicorn in a thread of this process, on a free port."""

    def __init__(self, tmp_path: Path, **config):
        import uvicorn

        settings = dict(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu") | config
        self.app = create_app(ServerConfig(**settings))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started, "the server started")
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(PATIENCE)


class ServeProcess:
    """`reverie serve` in a process of its own, on a free port, with the tiny random model."""

    def __init__(self, data: Path, *flags: str, crash_at: str | None = None):
        self.data, self.port = data, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("REVERIE_CRASH_AT", None)
        if crash_at:
            env["REVERIE_CRASH_AT"] = crash_at
        data.mkdir(parents=True, exist_ok=True)
        self.log = data.parent / f"serve-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reverie", "serve", "--data", str(data), "--port", str(self.port),
                 "--model", "tiny-random", "--device", "cpu", *flags],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        STARTED.append(self.process)
        wait_for(self._answers, "reverie serve answered /healthz")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"reverie serve ended ({self.process.returncode}):\n{self.output()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str):
        return httpx.get(self.url + path, timeout=60).json()

    def post(self, path: str, body: dict):
        response = httpx.post(self.url + path, json=body, timeout=60)
        assert response.status_code == 202, response.text
        return response.json()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(PATIENCE)

    def kill(self) -> int:
        self.process.kill()
        return self.process.wait(PATIENCE)

    def ended(self) -> int:
        """Wait for the process to end by itself (a crash point); its exit status."""
        return self.process.wait(PATIENCE)


def serve_check(data: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "reverie", "serve", "--check", "--data", str(data)],
                          capture_output=True, text=True, env=env, timeout=PATIENCE)


def job_status(server, job_id: str) -> dict:
    return server.get(f"/api/v1/jobs/{job_id}")


def finished(server, job_id: str) -> dict:
    def ended():
        job = job_status(server, job_id)
        return job if job["status"] not in ("queued", "running") else None

    return wait_for(ended, f"job {job_id} ended")


def database_rows(data: Path, query: str) -> list:
    connection = sqlite3.connect(f"{(data / 'gallery.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


# -- waiting costs nothing ----------------------------------------------------------------------
def test_requests_waiting_for_jobs_do_not_hold_up_the_others(tmp_path):
    """An A1111 request, an OpenAI edit and a variation all wait for their jobs; meanwhile the
    cheap requests are answered at once (before any of the three has ended)."""
    with ThreadServer(tmp_path) as server:
        answers: dict[str, httpx.Response] = {}

        def call(name, path, **kwargs):
            answers[name] = httpx.post(server.url + path, timeout=PATIENCE, **kwargs)

        long = {"prompt": "a long one", "steps": 500, "seed": 1, "batch_size": 1, **TINY}
        edit = {"files": {"image": ("in.png", png(alpha_from=40), "image/png")}, "data": {"prompt": "sky", "size": "64x64"}}
        variation = {"files": {"image": ("in.png", png(), "image/png")}, "data": {"size": "64x64"}}
        waiting = [threading.Thread(target=call, args=("a1111", "/sdapi/v1/txt2img"), kwargs={"json": long})]
        waiting[0].start()
        jobs = lambda: httpx.get(server.url + "/api/v1/jobs", timeout=PATIENCE).json()  # noqa: E731
        wait_for(lambda: [job for job in jobs() if job["status"] == "running"], "the A1111 job is running")
        waiting += [threading.Thread(target=call, args=("edit", "/v1/images/edits"), kwargs=edit),
                    threading.Thread(target=call, args=("variation", "/v1/images/variations"), kwargs=variation)]
        for thread in waiting[1:]:
            thread.start()
        wait_for(lambda: len(jobs()) == 3, "the edit and the variation are queued")

        # All three wait now. The cheap requests are answered while they still do.
        assert httpx.get(server.url + "/healthz", timeout=PATIENCE).text == "ok"
        listed = jobs()
        assert sorted(job["status"] for job in listed) == ["queued", "queued", "running"]
        assert all(thread.is_alive() for thread in waiting) and not answers

        long_job = next(job for job in listed if job["status"] == "running")
        httpx.delete(f"{server.url}/api/v1/jobs/{long_job['id']}", timeout=PATIENCE)
        for thread in waiting:
            thread.join(PATIENCE)
        assert {name: answer.status_code for name, answer in answers.items()} == {"a1111": 200, "edit": 200, "variation": 200}
        assert len(answers["edit"].json()["data"]) == 1 and len(answers["variation"].json()["data"]) == 1


def test_fifty_clients_waiting_at_once_all_get_their_pictures_charged_once(tmp_path):
    users, per_user = 5, 10
    with ThreadServer(tmp_path, multi_user=True, first_month_credits=per_user, monthly_credits=per_user,
                      queue_capacity=64) as server:
        gallery = server.app.state.studio.gallery
        keys = {}
        for number in range(users):
            user = gallery.add_user(f"user{number}", "pw")
            keys[user.id] = gallery.new_api_key(user.id)
        answers: list[httpx.Response] = []

        def call(key: str, seed: int):
            body = {"prompt": "a dot", "steps": 1, "seed": seed, "batch_size": 1, **TINY}
            answers.append(httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=PATIENCE,
                                      headers={"Authorization": f"Bearer {key}"}))

        clients = [threading.Thread(target=call, args=(key, 1000 + n * users + i))
                   for n in range(per_user) for i, key in enumerate(keys.values())]
        for client in clients:
            client.start()
        for client in clients:
            client.join(PATIENCE)

        assert [answer.status_code for answer in answers] == [200] * users * per_user, \
            [answer.text for answer in answers if answer.status_code != 200][:3]
        job_ids = {json.loads(answer.json()["info"])["reverie_job"] for answer in answers}
        assert len(job_ids) == users * per_user
        assert {gallery.job(job_id).status for job_id in job_ids} == {"done"}
        for user_id in keys:
            ledger = gallery.ledger(user_id)
            charges = [entry.job_id for entry in ledger if entry.reason == "charge"]
            assert [entry.reason for entry in ledger] == ["monthly"] + ["charge"] * per_user  # no refund, no second charge
            assert len(set(charges)) == per_user and set(charges) <= job_ids
            assert gallery.balance(user_id) == 0


def test_a_request_waiting_past_sync_timeout_gets_504_and_its_job_goes_on(tmp_path):
    from fastapi.testclient import TestClient

    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu",
                          start_worker=False, sync_timeout_s=0.5)  # no worker: the job cannot end
    with TestClient(create_app(config)) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, **TINY})
        assert response.status_code == 504
        [job] = client.get("/api/v1/jobs").json()
        assert job["status"] == "queued" and f"job {job['id']} has not ended" in response.json()["error"]["message"]


# -- stops and crashes --------------------------------------------------------------------------
# Eight pictures in four batches of two (A1111's fields: the native API makes one batch per job).
EIGHT = {"prompt": "eight seeds", "batch_size": 2, "n_iter": 4, "seed": 100, "steps": 3, **TINY}
EIGHT_SEEDS = list(range(100, 108))
TWO = {"prompt": "two seeds", "n_samples": 2, "seed": 500, "steps": 3, **TINY}


def a1111_in_background(server, body: dict) -> tuple[threading.Thread, dict]:
    """POST /sdapi/v1/txt2img from a thread (it waits for its job); returns the thread and where
    its answer (or the error that ended it) will be; the job's id once it is queued."""
    answer: dict = {}

    def call():
        try:
            answer["response"] = httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=PATIENCE)
        except httpx.TransportError as exc:  # the server was killed
            answer["error"] = exc

    known = {job["id"] for job in server.get("/api/v1/jobs")}
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    new = wait_for(lambda: [job["id"] for job in server.get("/api/v1/jobs") if job["id"] not in known], "the job is queued")
    answer["job"] = new[0]
    return thread, answer


def assert_whole(data: Path, jobs: dict[str, list[int]]) -> None:
    """Every job done with exactly its seeds, in order, each once; files and rows agree."""
    for job_id, seeds in jobs.items():
        rows = database_rows(data, f"SELECT seed FROM images WHERE job_id = '{job_id}' ORDER BY \"index\"")
        assert [seed for (seed,) in rows] == seeds
    check = serve_check(data)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all is well" in check.stdout


def test_sigterm_mid_job_puts_it_back_and_the_next_start_finishes_it(tmp_path):
    data = tmp_path / "studio"
    server = ServeProcess(data)
    waiting, answer = a1111_in_background(server, EIGHT)
    job = answer["job"]
    wait_for(lambda: len(job_status(server, job)["images"]) >= 2, "two pictures made")
    server.terminate()
    waiting.join(PATIENCE)

    # The client waiting for it is told, in the error shape, that its job is kept.
    assert answer["response"].status_code == 503
    error = answer["response"].json()["error"]
    assert f"job {job} is kept and resumes at the next start" in error["message"] and error["code"] == 503
    assert f"job {job} stopped with the server; it resumes at the next start" in server.output()
    [(status, attempts)] = database_rows(data, f"SELECT status, attempts FROM jobs WHERE id = '{job}'")
    assert (status, attempts) == ("queued", 0)  # back in the queue; a stop is not a failed attempt
    made_before = database_rows(data, f"SELECT COUNT(*) FROM images WHERE job_id = '{job}'")[0][0]
    assert 2 <= made_before < 8

    server = ServeProcess(data)
    assert finished(server, job)["status"] == "done"
    server.terminate()
    assert_whole(data, {job: EIGHT_SEEDS})


# The crash points count pictures over both jobs: two of the first job, then the eight-picture one.
CRASH_AT = {"mid-job": "after-image-row:5", "while-writing": "after-image-file:5"}


@pytest.mark.parametrize("moment", ["queued", "mid-job", "while-writing"])
def test_kill_9_then_restart_makes_each_seed_exactly_once(tmp_path, moment):
    data = tmp_path / "studio"
    server = ServeProcess(data, crash_at=CRASH_AT.get(moment))
    # Killed while queued: the first job is long enough to be running still when the second is queued.
    first = server.post("/api/v1/jobs", TWO | {"steps": 100} if moment == "queued" else TWO)["id"]
    _, answer = a1111_in_background(server, EIGHT)
    second = answer["job"]
    if moment == "queued":
        server.kill()
        assert database_rows(data, "SELECT status FROM jobs ORDER BY created") == [("running",), ("queued",)]
    else:
        assert server.ended() == -signal.SIGKILL  # the crash point killed it
    rows = database_rows(data, f"SELECT COUNT(*) FROM images WHERE job_id = '{second}'")[0][0]
    if moment == "mid-job":
        assert rows == 3  # half of its second batch is in: that batch is made again, only its missing picture kept
    if moment == "while-writing":
        assert rows == 2 and (data / "images" / "1" / f"{second}-2.png").is_file()  # a file without its row
        assert serve_check(data).returncode == 1

    server = ServeProcess(data)
    assert finished(server, first)["status"] == "done"
    assert finished(server, second)["status"] == "done"
    if moment == "mid-job":
        # The resumed pictures are those of an uninterrupted run, bit for bit.
        _, again = a1111_in_background(server, EIGHT)
        pixels = lambda image: np.asarray(Image.open(io.BytesIO(httpx.get(server.url + image["url"]).content)))  # noqa: E731
        resumed, uninterrupted = finished(server, second)["images"], finished(server, again["job"])["images"]
        assert len(resumed) == len(uninterrupted) == 8
        assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(resumed, uninterrupted))
    server.terminate()
    assert_whole(data, {first: [500, 501], second: EIGHT_SEEDS})


# -- a broken database --------------------------------------------------------------------------
def small_gallery(folder: Path, database: str | None = None, credits: int = 5):
    """A gallery with one user (`credits` granted) and one job of two pictures, closed again."""
    from reverie.gallery.store import Gallery

    gallery = Gallery(folder, database)
    try:
        user = gallery.add_user("ann", "pw")
        if credits:
            gallery.grant(user.id, credits)
        job = gallery.add_job(user.id, "txt2img", {"prompt": "x"}, capacity=10)
        for index in range(2):
            source = folder / f"made-{index}.png"
            source.write_bytes(png((index * 100, 0, 0)))
            gallery.add_image(job, index, source, "x", 10 + index, {"index": index})
            source.unlink()
        return job
    finally:
        gallery.engine.dispose()  # the last connection closes: on SQLite the WAL is folded into the file


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_broken_database_is_refused_in_one_line_and_left_untouched(tmp_path, damage):
    data = tmp_path / "studio"
    small_gallery(data)
    database = data / "gallery.sqlite"
    whole = database.read_bytes()
    broken = {"empty": b"", "truncated": whole[: len(whole) // 2],
              "garbage": bytes(np.random.default_rng(0).integers(0, 256, len(whole), np.uint8))}[damage]
    database.write_bytes(broken)
    files_before = sorted(path.name for path in data.iterdir())

    env = os.environ | {"PYTHONPATH": str(SRC), "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-m", "reverie", "serve", "--data", str(data), "--port", str(free_port()),
                           "--model", "tiny-random", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=PATIENCE)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert str(database) in lines[0] and "restore it from a backup, or move it aside" in lines[0]
    assert hashlib.sha256(database.read_bytes()).digest() == hashlib.sha256(broken).digest()
    assert sorted(path.name for path in data.iterdir()) == files_before  # no -wal, no -shm, nothing new
    check = serve_check(data)
    assert check.returncode == 1 and "restore it from a backup" in check.stdout


def test_serve_check_finds_an_orphan_file_and_a_missing_one(tmp_path):
    data = tmp_path / "studio"
    job = small_gallery(data)
    assert serve_check(data).returncode == 0
    pictures = data / "images" / "1"
    (pictures / f"{job.id}-0.png").unlink()  # a row without its file
    (pictures / "stray.png").write_bytes(png())  # a file without its row
    check = serve_check(data)
    assert check.returncode == 1
    assert f"images/1/{job.id}-0.png" in check.stdout and "images/1/stray.png" in check.stdout
    assert "1 row(s) without their file" in check.stdout and "1 file(s) without a row" in check.stdout


# -- the database ----------------------------------------------------------------------------------
def test_reads_never_wait_for_the_write_lock(tmp_path, gallery_database):
    from reverie.gallery.models import LedgerEntry
    from reverie.gallery.store import Gallery

    gallery = Gallery(tmp_path / "g", database=gallery_database)
    user = gallery.add_user("ann", "pw")
    with gallery.session.begin() as db:  # a writer holds the write lock (BEGIN IMMEDIATE; an advisory lock) ...
        db.add(LedgerEntry(user_id=user.id, amount=5, reason="grant"))
        db.flush()
        # ... and readers on other connections go on, seeing what was committed before it
        assert gallery.balance(user.id) == 0 and [u.name for u in gallery.users()] == ["ann"]
    assert gallery.balance(user.id) == 5


def test_a_gallery_from_before_picture_places_keeps_every_picture(tmp_path):
    """Migration 0002 numbers the pictures already in a gallery, those a resumed job doubled too."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from reverie.gallery.db import MIGRATIONS
    from reverie.gallery.store import Gallery

    folder = tmp_path / "old"
    folder.mkdir()
    engine = create_engine(f"sqlite:///{folder / 'gallery.sqlite'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.exec_driver_sql("INSERT INTO users VALUES (1, 'ann', '', 0, '2026-01-01')")
        connection.exec_driver_sql("INSERT INTO jobs VALUES ('j', 1, 'txt2img', 'done', '{}', 2, '', 0, '2026-01-01', NULL, NULL)")
        for number, index in enumerate([0, 1, 2, 0, 1]):  # a job that made its first two pictures twice
            connection.exec_driver_sql(
                f"INSERT INTO images VALUES ('i{number}', 'j', 1, '1/i{number}.png', '', {10 + index}, 64, 64, "
                f"'{{\"index\": {index}}}', '2026-01-01 00:00:0{number}')")
    engine.dispose()

    gallery = Gallery(folder)
    [job] = gallery.jobs(1)
    images = gallery.job_images(job)
    assert [image.id for image in images] == ["i0", "i3", "i1", "i4", "i2"]
    assert [image.index for image in images] == [0, 1, 2, 3, 4] and gallery.made("j") == 5


def test_a_video_job_stopped_with_the_server_goes_on_from_its_frames(tmp_path):
    data = tmp_path / "studio"
    server = ServeProcess(data)
    job = server.post("/api/v1/jobs", {"mode": "video", "motion": "walk", "prompts": ["a castle", "a boat"],
                                       "seeds": [1, 2], "frames": 80, "steps": 2, "width": 64, "height": 64,
                                       "upscale": 1})["id"]
    wait_for(lambda: job_status(server, job)["progress"]["step"] >= 3, "three frames made")
    server.terminate()
    record = json.loads((data / "work" / job / "video.json").read_text())
    assert 3 <= record["frames_done"] < 80 and record["status"] == "stopped"

    server = ServeProcess(data)
    assert finished(server, job)["status"] == "done"
    [image] = job_status(server, job)["images"]
    [video] = (data / "images").glob(f"*/{job}-0.mp4")
    assert image["video"] and video_info(video).frames == 80
    server.terminate()
    assert not (data / "work" / job).exists()
