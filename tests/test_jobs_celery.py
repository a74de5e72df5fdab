"""The distributed engine with real servers: redis-server and PostgreSQL (tests/servers.py), two
`reverie worker` processes and two `reverie serve --broker --database` front ends on one gallery:
the issue's deployment (Celery + Redis + PostgreSQL; one case also on SQLite in a shared folder).

Jobs from the native, A1111 and OpenAI APIs finish; a worker killed (SIGKILL, at a crash point)
mid-job gives its job back and another finishes it with each seed exactly once; a job running on
a worker streams its progress and previews through a front end it was not sent to.
Nothing is timed: the tests wait for events and check what happened.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import reverie
from reverie.gallery.db import database_url
from reverie.gallery.store import Gallery
from servers import STARTED, free_port, wait_for

SRC = Path(reverie.__file__).resolve().parents[1]
PATIENCE = 600
TINY = {"width": 64, "height": 64}
EIGHT = {"prompt": "eight seeds", "batch_size": 2, "n_iter": 4, "seed": 100, "steps": 2, **TINY}
EIGHT_SEEDS = list(range(100, 108))
# Short broker and lease times, so a killed worker's job comes back within seconds.
ENGINE_ENV = {"REVERIE_VISIBILITY_TIMEOUT": "4", "REVERIE_LEASE_S": "3"}




@pytest.fixture
def broker(redis_url) -> str:
    """A flushed database index of its own on the session's redis-server."""
    return redis_url


@dataclass
class Shared:
    """What the processes of one deployment share: the gallery folder (pictures) and its database
    (`database`: a PostgreSQL URL, or None for the SQLite file in the folder), and the broker."""

    data: Path
    database: str | None
    broker: str

    def flags(self) -> list[str]:
        return ["--data", str(self.data), "--broker", self.broker, *(["--database", self.database] if self.database else [])]

    def rows(self, query: str) -> list[tuple]:
        if self.database is None:
            connection = sqlite3.connect(f"{(self.data / 'gallery.sqlite').as_uri()}?mode=ro", uri=True)
            try:
                return connection.execute(query).fetchall()
            finally:
                connection.close()
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(database_url(self.database), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(query))]
        finally:
            engine.dispose()

    def gallery(self) -> Gallery:
        return Gallery(self.data, database=self.database)


def make_shared(tmp_path: Path, database: str | None, broker: str) -> Shared:
    shared = Shared(tmp_path / "studio", database, broker)
    shared.gallery().engine.dispose()  # made and migrated once, before the processes share it
    return shared


@pytest.fixture
def shared(tmp_path, postgres_url, broker) -> Shared:
    """The issue's deployment: the gallery's rows in PostgreSQL, its pictures in a shared folder."""
    return make_shared(tmp_path, postgres_url, broker)


@pytest.fixture(params=["postgresql", "sqlite"])
def either(request, tmp_path, broker) -> Shared:
    """The deployment on PostgreSQL, and on the SQLite file of a shared folder."""
    database = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return make_shared(tmp_path, database, broker)


class Process:
    def __init__(self, log: Path, command: list[str], crash_at: str | None = None):
        env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | ENGINE_ENV
        env.pop("REVERIE_CRASH_AT", None)
        if crash_at:
            env["REVERIE_CRASH_AT"] = crash_at
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "reverie", *command], stdout=out,
                                            stderr=subprocess.STDOUT, env=env)
        STARTED.append(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self, what: str) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{what} ended ({self.process.returncode}):\n{self.output()[-4000:]}")

    def kill(self) -> int:
        self.process.kill()
        return self.process.wait(PATIENCE)

    def loaded_torch(self) -> bool:
        """Whether the process has torch's library mapped (it imported torch)."""
        return "libtorch" in Path(f"/proc/{self.process.pid}/maps").read_text()


class Worker(Process):
    """`reverie worker` on the shared gallery, ready once Celery says so."""

    def __init__(self, shared: Shared, name: str, crash_at: str | None = None):
        super().__init__(shared.data.parent / f"worker-{name}.log", ["worker", *shared.flags(), "--device", "cpu"], crash_at)
        wait_for(lambda: self.alive(f"worker {name}") or " ready." in self.output(), f"worker {name} ready")


class FrontEnd(Process):
    """`reverie serve --broker` on the shared gallery, on a free port; `flags` added (--multi-user)."""

    def __init__(self, shared: Shared, *flags: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.headers: dict = {}
        super().__init__(shared.data.parent / f"serve-{self.url.rsplit(':', 1)[1]}.log",
                         ["serve", *shared.flags(), "--port", self.url.rsplit(":", 1)[1], "--model", "tiny-random",
                          "--device", "cpu", *flags])
        wait_for(self._answers, "reverie serve --broker answered /healthz")

    def _answers(self) -> bool:
        self.alive("reverie serve --broker")
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str):
        return httpx.get(self.url + path, headers=self.headers, timeout=60).json()

    def post(self, path: str, body: dict, status: int = 202):
        response = httpx.post(self.url + path, json=body, headers=self.headers, timeout=PATIENCE)
        assert response.status_code == status, response.text
        return response.json()

    def finished(self, job_id: str) -> dict:
        def ended():
            job = self.get(f"/api/v1/jobs/{job_id}")
            return job if job["status"] not in ("queued", "running") else None

        return wait_for(ended, f"job {job_id} ended")


def in_background(call) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.setdefault("value", call()), daemon=True)
    thread.start()
    return thread, answer


def files_match_rows(shared: Shared) -> None:
    """Every picture file has its row and every row its file (`serve --check`, for any database)."""
    on_disk = {path.relative_to(shared.data / "images").as_posix()
               for path in (shared.data / "images").rglob("*") if path.is_file()}
    listed = {file for (file,) in shared.rows("SELECT file FROM images")}
    assert on_disk == listed, (sorted(on_disk - listed), sorted(listed - on_disk))


def test_jobs_from_every_api_finish_on_two_workers_behind_two_front_ends(shared):
    workers = [Worker(shared, "a"), Worker(shared, "b")]
    first, second = FrontEnd(shared), FrontEnd(shared)

    native = first.post("/api/v1/jobs", {"prompt": "native", "n_samples": 2, "seed": 500, "steps": 2, **TINY})["id"]
    a1111, a1111_answer = in_background(lambda: second.post(
        "/sdapi/v1/txt2img", {"prompt": "a1111", "batch_size": 2, "seed": 7, "steps": 2, **TINY}, 200))
    openai, openai_answer = in_background(lambda: first.post(
        "/v1/images/generations", {"prompt": "openai", "n": 1, "size": "64x64", "response_format": "b64_json"}, 200))

    job = second.finished(native)  # followed through the front end it was not sent to
    assert job["status"] == "done" and [image["seed"] for image in job["images"]] == [500, 501]
    a1111.join(PATIENCE), openai.join(PATIENCE)
    assert len(a1111_answer["value"]["images"]) == 2
    assert json.loads(a1111_answer["value"]["info"])["all_seeds"] == [7, 8]
    assert len(openai_answer["value"]["data"]) == 1 and openai_answer["value"]["data"][0]["b64_json"]
    assert shared.rows("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 3)]
    assert shared.rows("SELECT COUNT(*) FROM images") == [(5,)]
    files_match_rows(shared)
    for worker in workers:
        worker.alive("a worker")
    # A front end queues, validates and answers without torch: it starts in a second or two and
    # stays a small process; the workers import it.
    assert not first.loaded_torch() and not second.loaded_torch()
    assert all(worker.loaded_torch() for worker in workers)


def test_a_worker_killed_mid_job_gives_it_back_and_another_makes_each_seed_once(either):
    shared = either
    doomed = Worker(shared, "doomed", crash_at="after-image-row:3")  # SIGKILLs itself after 3 pictures
    front = FrontEnd(shared)
    waiting, answer = in_background(lambda: front.post("/sdapi/v1/txt2img", EIGHT, 200))  # batches of two
    job = wait_for(lambda: front.get("/api/v1/jobs"), "the job is queued")[0]["id"]
    assert doomed.process.wait(PATIENCE) == -signal.SIGKILL
    assert shared.rows(f"SELECT status, attempts FROM jobs WHERE id = '{job}'") == [("running", 1)]
    assert shared.rows(f"SELECT COUNT(*) FROM images WHERE job_id = '{job}'") == [(3,)]

    Worker(shared, "rescuer")
    assert front.finished(job)["status"] == "done"
    waiting.join(PATIENCE)
    assert json.loads(answer["value"]["info"])["all_seeds"] == EIGHT_SEEDS  # its client waited through it all
    seeds = shared.rows(f"SELECT seed FROM images WHERE job_id = '{job}' ORDER BY \"index\"")
    assert [seed for (seed,) in seeds] == EIGHT_SEEDS  # each seed once, in order
    assert shared.rows(f"SELECT attempts FROM jobs WHERE id = '{job}'") == [(2,)]
    files_match_rows(shared)  # the killed worker's unfinished files were removed or replaced


def test_progress_of_a_job_streams_through_the_other_front_end(shared):
    Worker(shared, "a")
    sender, watcher = FrontEnd(shared), FrontEnd(shared)
    job = sender.post("/api/v1/jobs", {"prompt": "a long one", "n_samples": 1, "seed": 3, "steps": 400, **TINY})["id"]

    seen = []
    with httpx.stream("GET", f"{watcher.url}/api/v1/jobs/{job}/events", timeout=PATIENCE) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                progress = json.loads(line[len("data: "):])["progress"]
                seen.append(progress)
                if progress["stage"] == "denoising" and progress["step"] > 0 and progress["preview_version"] is not None:
                    break
    step = seen[-1]["step"]
    assert 0 < step < 400 and seen[-1]["total"] == 400

    preview = httpx.get(f"{watcher.url}/api/v1/jobs/{job}/preview.png", timeout=60)
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    a1111 = watcher.get("/sdapi/v1/progress")
    assert a1111["state"]["job"] == job and a1111["progress"] > 0 and a1111["state"]["sampling_steps"] == 400

    # Cancelled through the watcher, on the worker the sender's job went to.
    assert httpx.delete(f"{watcher.url}/api/v1/jobs/{job}", timeout=60).status_code == 200
    assert sender.finished(job)["status"] == "cancelled"
