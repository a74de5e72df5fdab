"""The distributed deployment's durability on real servers (issue 21): Celery + redis-server +
PostgreSQL, `reverie serve --broker --database` front ends and `reverie worker` processes
(helpers from test_jobs_celery.py).

- 30 concurrent charges against 7 credits through two front ends take exactly 7 (the database's
  transactions decide, not a process's lock); the 23 others are refused 402, charged nothing.
- A front end killed (SIGKILL) while a job it accepted runs loses nothing: the worker finishes it,
  the other front end shows it done with each seed once, and its client follows it there.
- A job the broker cannot take (redis-server stopped) is answered 503 in the documented error
  shape and refunded; once the broker is back, the same front end takes jobs again, and sends
  again the job whose message the stopped broker lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from servers import redis_server
from test_jobs_celery import (PATIENCE, SRC, TINY, FrontEnd, Shared, Worker,  # noqa: F401
                              broker, files_match_rows, make_shared, shared, wait_for)

# Charged front ends: one credit a request, no free monthly credits (a user has what was granted).
PAYING = ("--multi-user", "--first-month-credits", "0", "--monthly-credits", "0", "--queue", "64")
ONE = {"prompt": "one picture", "n_samples": 1, "steps": 2, **TINY}


def users(shared: Shared, *words: str) -> str:
    """Run `reverie users ...` on the shared gallery; its output."""
    database = ["--database", shared.database] if shared.database else []
    done = subprocess.run([sys.executable, "-m", "reverie", "users", *words, "--data", str(shared.data), *database],
                          capture_output=True, text=True, timeout=PATIENCE,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def paying_user(shared: Shared, credits: int) -> tuple[dict, int]:
    """A user with exactly `credits` credits (granted through `reverie users`): their API key's
    headers and their id."""
    users(shared, "add", "dee", "--password", "a long password")
    assert "balance " + str(credits) in users(shared, "grant", "dee", str(credits))
    key = users(shared, "key", "dee").strip().splitlines()[-1]
    gallery = shared.gallery()
    try:
        user_id = gallery.user("dee").id
    finally:
        gallery.engine.dispose()
    return {"Authorization": f"Bearer {key}"}, user_id


def ledger(shared: Shared, user_id: int) -> list[tuple[str, int]]:
    return shared.rows(f"SELECT reason, amount FROM ledger WHERE user_id = {user_id} ORDER BY id")


def is_error_shape(body: dict, status: int, kind: str) -> bool:
    error = body["error"]
    return (error["code"] == status and error["type"] == kind and error["message"] and body["detail"] == error["message"]
            and "param" in error)


def test_thirty_charges_against_seven_credits_through_two_front_ends_take_exactly_seven(shared):
    fronts = [FrontEnd(shared, *PAYING), FrontEnd(shared, *PAYING)]
    headers, user_id = paying_user(shared, 7)
    start = threading.Barrier(30)

    def charge(number: int) -> httpx.Response:
        start.wait()  # all 30 at once, half through each front end
        return httpx.post(fronts[number % 2].url + "/api/v1/jobs", json=ONE | {"seed": number}, headers=headers,
                          timeout=PATIENCE)

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(charge, range(30)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [202] * 7 + [402] * 23, [answer.text for answer in answers if answer.status_code not in (202, 402)]
    for answer in answers:
        if answer.status_code == 402:
            assert is_error_shape(answer.json(), 402, "insufficient_credit"), answer.text
            assert "not enough credit" in answer.json()["error"]["message"]
    accepted = {answer.json()["id"] for answer in answers if answer.status_code == 202}
    assert {job for (job,) in shared.rows("SELECT id FROM jobs")} == accepted  # a refused request queues nothing
    entries = ledger(shared, user_id)
    assert entries == [("grant", 7)] + [("charge", -1)] * 7 and sum(amount for _, amount in entries) == 0
    assert shared.rows(f"SELECT COUNT(DISTINCT job_id) FROM ledger WHERE reason = 'charge' AND user_id = {user_id}") == [(7,)]

    import redis

    assert redis.Redis.from_url(shared.broker).llen("reverie") == 7  # each accepted job sent once, no other


def test_a_front_end_killed_while_its_job_runs_loses_nothing(shared):
    Worker(shared, "a")
    doomed, other = FrontEnd(shared), FrontEnd(shared)
    seeds = [40, 41, 42]
    job = doomed.post("/api/v1/jobs", {"prompt": "outlives its front end", "n_samples": 3, "seed": 40, "steps": 60,
                                       **TINY})["id"]

    # Its client follows it through the front end that took it, until the worker is denoising.
    with pytest.raises(httpx.TransportError):  # the stream breaks when its front end dies
        with httpx.stream("GET", f"{doomed.url}/api/v1/jobs/{job}/events", timeout=PATIENCE) as events:
            for line in events.iter_lines():
                progress = json.loads(line[len("data: "):])["progress"] if line.startswith("data: ") else {}
                if progress.get("stage") == "denoising" and progress["step"] > 0 and doomed.process.poll() is None:
                    assert doomed.kill() == -signal.SIGKILL
    assert shared.rows(f"SELECT status, attempts FROM jobs WHERE id = '{job}'") == [("running", 1)]  # it ran on

    # The client re-attaches through the other front end (finding the job there by its id, or in the list).
    assert job in [listed["id"] for listed in other.get("/api/v1/jobs")]
    with httpx.stream("GET", f"{other.url}/api/v1/jobs/{job}/events", timeout=PATIENCE) as events:
        last = [line for line in events.iter_lines() if line.startswith("data: ")][-1]
    assert '"status": "done"' in last
    view = other.get(f"/api/v1/jobs/{job}")
    assert view["status"] == "done" and [image["seed"] for image in view["images"]] == seeds
    rows = shared.rows(f"SELECT seed FROM images WHERE job_id = '{job}' ORDER BY \"index\"")
    assert [seed for (seed,) in rows] == seeds  # each seed once
    assert shared.rows(f"SELECT attempts FROM jobs WHERE id = '{job}'") == [(1,)]  # the worker never stopped
    files_match_rows(shared)


def test_a_job_the_broker_cannot_take_is_answered_503_and_refunded(tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("REVERIE_RESEND_S", "1")  # the front end looks for lost messages every second
    with redis_server() as broker:
        shared = make_shared(tmp_path, postgres_url, broker.url(0))
        front = FrontEnd(shared, *PAYING)
        headers, user_id = paying_user(shared, 2)
        front.headers = headers
        taken = front.post("/api/v1/jobs", ONE)["id"]
        port = broker.port
        broker.kill()  # redis-server gone, the front end still up

    answer = httpx.post(front.url + "/api/v1/jobs", json=ONE, headers=headers, timeout=PATIENCE)
    assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
    assert is_error_shape(answer.json(), 503, "service_unavailable") and "broker" in answer.json()["error"]["message"]
    a1111 = httpx.post(front.url + "/sdapi/v1/txt2img", json={"prompt": "a1111", "steps": 2, **TINY}, headers=headers,
                       timeout=PATIENCE)
    assert a1111.status_code == 503 and is_error_shape(a1111.json(), 503, "service_unavailable"), a1111.text
    front.alive("the front end, its broker gone")
    assert front.get("/api/v1/credits")["balance"] == 1  # the refused requests cost nothing
    refused = shared.rows(f"SELECT status, error FROM jobs WHERE id <> '{taken}'")
    assert len(refused) == 2 and all(status == "failed" and "not sent" in error for status, error in refused)
    assert ledger(shared, user_id) == [("grant", 2), ("charge", -1), ("charge", -1), ("refund", 1), ("charge", -1), ("refund", 1)]

    with redis_server(port=port) as again:  # the broker is back (empty: it kept nothing)
        def sent() -> bool:
            answer = httpx.post(front.url + "/api/v1/jobs", json=ONE, headers=headers, timeout=PATIENCE)
            assert answer.status_code in (202, 503), answer.text
            return answer.status_code == 202

        wait_for(sent, "the front end takes jobs again once its broker is back", patience=60)
        # The new job's message, and the one `taken` had, lost with the broker and sent again by the
        # front end's sweep (jobs/resend.py): both jobs are in the queue, each once.
        wait_for(lambda: again.command("LLEN", "reverie") == b":2", "the lost job was sent again", patience=60)
        # (the sweep logs after it sends: the queue can be full a moment before the line is written)
        wait_for(lambda: f"job {taken} had no message in the broker" in front.output(), "the sweep's log line", patience=30)
        assert front.get("/api/v1/credits")["balance"] == 0
