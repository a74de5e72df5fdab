"""Dynamic batching on the distributed engine (real redis-server and PostgreSQL): a `reverie worker`
that takes a job also takes the queued jobs that can share its passes, and each gets exactly its
own seeds' pictures, the same pixels as when it runs alone."""

from __future__ import annotations

import numpy as np
from PIL import Image

from test_jobs_celery import TINY, FrontEnd, Worker, broker, files_match_rows, shared  # noqa: F401  (fixtures)

BODIES = [{"prompt": "red apple", "seed": 11, "n_samples": 2, "steps": 2, **TINY},
          {"prompt": "a lighthouse", "seed": 20, "n_samples": 1, "steps": 2, **TINY},
          {"prompt": "a boat", "negative_prompt": "fog", "seed": 30, "n_samples": 2, "steps": 2, **TINY}]


def pictures(shared, job_id: str) -> list[tuple[int, np.ndarray]]:
    rows = shared.rows(f"SELECT seed, file FROM images WHERE job_id = '{job_id}' ORDER BY \"index\"")
    found = []
    for seed, file in rows:
        with Image.open(shared.data / "images" / file) as picture:
            found.append((seed, np.asarray(picture.convert("RGB"))))
    return found


def test_a_worker_takes_compatible_queued_jobs_together_and_each_gets_its_own_seeds(shared):
    front = FrontEnd(shared)
    ids = [front.post("/api/v1/jobs", body)["id"] for body in BODIES]  # no worker yet: they wait
    worker = Worker(shared, "a")
    assert [front.finished(job_id)["status"] for job_id in ids] == ["done"] * 3
    # One worker, one job at a time unless shared: each started before any of them finished.
    times = shared.rows(f"SELECT started, finished FROM jobs WHERE id IN ({', '.join(repr(i) for i in ids)})")
    assert max(started for started, _ in times) < min(finished for _, finished in times)
    assert "shares the passes" in worker.output()

    made = [pictures(shared, job_id) for job_id in ids]
    assert [[seed for seed, _ in job] for job in made] == [[11, 12], [20], [30, 31]]
    # The same request again, alone on the same worker: the same pixels, bit for bit.
    again = front.post("/api/v1/jobs", BODIES[2])["id"]
    assert front.finished(again)["status"] == "done"
    alone = pictures(shared, again)
    assert [seed for seed, _ in alone] == [30, 31]
    assert all(np.array_equal(one, other) for (_, one), (_, other) in zip(alone, made[2]))
    assert shared.rows("SELECT COUNT(*) FROM images") == [(7,)]
    files_match_rows(shared)
    worker.alive("the worker")
