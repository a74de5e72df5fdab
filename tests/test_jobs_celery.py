"""The distributed engine with real servers: redis-server (tests/servers.py), two `reverie worker`
processes and two `reverie serve --broker` front ends on one gallery (SQLite in a shared folder).

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
import time
from pathlib import Path

import httpx
import pytest

import reverie
from reverie.gallery.store import Gallery
from servers import free_port, redis_server

SRC = Path(reverie.__file__).resolve().parents[1]
PATIENCE = 600
TINY = {"width": 64, "height": 64}
EIGHT = {"prompt": "eight seeds", "batch_size": 2, "n_iter": 4, "seed": 100, "steps": 3, **TINY}
EIGHT_SEEDS = list(range(100, 108))
# Short broker and lease times, so a killed worker's job comes back within seconds.
ENGINE_ENV = {"REVERIE_VISIBILITY_TIMEOUT": "4", "REVERIE_LEASE_S": "3"}


def wait_for(check, what: str, patience: float = PATIENCE):
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(scope="module")
def redis():
    with redis_server() as server:
        yield server


@pytest.fixture
def broker(redis) -> str:
    return redis.new_database()


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "studio"
    Gallery(folder).engine.dispose()  # made and migrated once, before the processes share it
    return folder


PROCESSES: list = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    yield
    while PROCESSES:
        process = PROCESSES.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


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
        PROCESSES.append(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self, what: str) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{what} ended ({self.process.returncode}):\n{self.output()[-4000:]}")


class Worker(Process):
    """`reverie worker` on the shared gallery, ready once Celery says so."""

    def __init__(self, data: Path, broker: str, name: str, crash_at: str | None = None):
        super().__init__(data.parent / f"worker-{name}.log",
                         ["worker", "--broker", broker, "--data", str(data), "--device", "cpu"], crash_at)
        wait_for(lambda: self.alive(f"worker {name}") or " ready." in self.output(), f"worker {name} ready")


class FrontEnd(Process):
    """`reverie serve --broker` on the shared gallery, on a free port."""

    def __init__(self, data: Path, broker: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(data.parent / f"serve-{self.url.rsplit(':', 1)[1]}.log",
                         ["serve", "--data", str(data), "--port", self.url.rsplit(":", 1)[1], "--model", "tiny-random",
                          "--device", "cpu", "--broker", broker])
        wait_for(self._answers, "reverie serve --broker answered /healthz")

    def _answers(self) -> bool:
        self.alive("reverie serve --broker")
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str):
        return httpx.get(self.url + path, timeout=60).json()

    def post(self, path: str, body: dict, status: int = 202):
        response = httpx.post(self.url + path, json=body, timeout=PATIENCE)
        assert response.status_code == status, response.text
        return response.json()

    def finished(self, job_id: str) -> dict:
        def ended():
            job = self.get(f"/api/v1/jobs/{job_id}")
            return job if job["status"] not in ("queued", "running") else None

        return wait_for(ended, f"job {job_id} ended")


def rows(data: Path, query: str) -> list:
    connection = sqlite3.connect(f"{(data / 'gallery.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def in_background(call) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.setdefault("value", call()), daemon=True)
    thread.start()
    return thread, answer


def test_jobs_from_every_api_finish_on_two_workers_behind_two_front_ends(data, broker):
    workers = [Worker(data, broker, "a"), Worker(data, broker, "b")]
    first, second = FrontEnd(data, broker), FrontEnd(data, broker)

    native = first.post("/api/v1/jobs", {"prompt": "native", "n_samples": 2, "seed": 500, "steps": 3, **TINY})["id"]
    a1111, a1111_answer = in_background(lambda: second.post(
        "/sdapi/v1/txt2img", {"prompt": "a1111", "batch_size": 2, "seed": 7, "steps": 3, **TINY}, 200))
    openai, openai_answer = in_background(lambda: first.post(
        "/v1/images/generations", {"prompt": "openai", "n": 1, "size": "64x64", "response_format": "b64_json"}, 200))

    job = second.finished(native)  # followed through the front end it was not sent to
    assert job["status"] == "done" and [image["seed"] for image in job["images"]] == [500, 501]
    a1111.join(PATIENCE), openai.join(PATIENCE)
    assert len(a1111_answer["value"]["images"]) == 2
    assert json.loads(a1111_answer["value"]["info"])["all_seeds"] == [7, 8]
    assert len(openai_answer["value"]["data"]) == 1 and openai_answer["value"]["data"][0]["b64_json"]
    assert rows(data, "SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 3)]
    assert rows(data, "SELECT COUNT(*) FROM images") == [(5,)]
    for worker in workers:
        worker.alive("a worker")


def test_a_worker_killed_mid_job_gives_it_back_and_another_makes_each_seed_once(data, broker):
    doomed = Worker(data, broker, "doomed", crash_at="after-image-row:3")  # SIGKILLs itself after 3 pictures
    front = FrontEnd(data, broker)
    waiting, answer = in_background(lambda: front.post("/sdapi/v1/txt2img", EIGHT, 200))  # batches of two
    job = wait_for(lambda: front.get("/api/v1/jobs"), "the job is queued")[0]["id"]
    assert doomed.process.wait(PATIENCE) == -signal.SIGKILL
    assert rows(data, f"SELECT status, attempts FROM jobs WHERE id = '{job}'") == [("running", 1)]
    assert rows(data, f"SELECT COUNT(*) FROM images WHERE job_id = '{job}'") == [(3,)]

    Worker(data, broker, "rescuer")
    assert front.finished(job)["status"] == "done"
    waiting.join(PATIENCE)
    assert json.loads(answer["value"]["info"])["all_seeds"] == EIGHT_SEEDS  # its client waited through it all
    seeds = rows(data, f"SELECT seed FROM images WHERE job_id = '{job}' ORDER BY \"index\"")
    assert [seed for (seed,) in seeds] == EIGHT_SEEDS  # each seed once, in order
    assert rows(data, f"SELECT attempts FROM jobs WHERE id = '{job}'") == [(2,)]
    check = subprocess.run([sys.executable, "-m", "reverie", "serve", "--check", "--data", str(data)],
                           capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(SRC)}, timeout=PATIENCE)
    assert check.returncode == 0 and "all is well" in check.stdout, check.stdout + check.stderr


def test_progress_of_a_job_streams_through_the_other_front_end(data, broker):
    Worker(data, broker, "a")
    sender, watcher = FrontEnd(data, broker), FrontEnd(data, broker)
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
