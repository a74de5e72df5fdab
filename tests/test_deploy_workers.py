"""`reverie worker` processes on real redis-server and PostgreSQL (issue 21), with the helpers of
test_jobs_celery.py:

- SIGTERM (not SIGKILL) to a worker mid-job (sent by itself after its second picture, faults.py): it stops at its next step, the job goes back to the
  queue uncounted, another worker finishes it with each seed exactly once, its client waiting
  through it all.
- `reverie worker --models mini`: jobs for `mini` run on that worker (its own queue), every other
  job on a worker without `--models`; which worker ran what is read from the per-worker counts of
  a front end's /metrics.
"""

from __future__ import annotations

import json
import re
import socket

from test_jobs_celery import (EIGHT, EIGHT_SEEDS, PATIENCE, TINY, FrontEnd, Process, Shared, Worker,  # noqa: F401
                              broker, files_match_rows, in_background, shared, wait_for)



class ModelWorker(Process):
    """`reverie worker --models ...` on the shared gallery."""

    def __init__(self, shared: Shared, name: str, *flags: str):
        super().__init__(shared.data.parent / f"worker-{name}.log", ["worker", *shared.flags(), "--device", "cpu", *flags])
        wait_for(lambda: self.alive(f"worker {name}") or " ready." in self.output(), f"worker {name} ready")


def worker_counts(front: FrontEnd, process) -> dict[str, float]:
    """The per-worker series of /metrics for the worker process `process` (named <host>-<pid>)."""
    name = f"{socket.gethostname()}-{process.pid}"
    text = front_text(front, "/metrics")
    counts = {}
    for line in text.splitlines():
        found = re.match(r'(reverie_worker_\w+)\{([^}]*)\} (\S+)$', line)
        if found and f'worker="{name}"' in found.group(2):
            status = re.search(r'status="(\w+)"', found.group(2))
            counts[found.group(1) + (f":{status.group(1)}" if status else "")] = float(found.group(3))
    return counts


def front_text(front: FrontEnd, path: str) -> str:
    import httpx

    return httpx.get(front.url + path, timeout=60).text


def test_sigterm_to_a_worker_mid_job_puts_it_back_and_another_makes_each_seed_once(shared):
    # SIGTERM (not SIGKILL) at a known moment: the worker sends it to itself once its second
    # picture's row is in (faults.py), as `docker stop` or systemd would send it from outside.
    stopping = Worker(shared, "stopping", crash_at="after-image-row:2:TERM")
    front = FrontEnd(shared)
    waiting, answer = in_background(lambda: front.post("/sdapi/v1/txt2img", EIGHT, 200))
    job = wait_for(lambda: front.get("/api/v1/jobs"), "the job is queued")[0]["id"]
    made = lambda: shared.rows(f"SELECT COUNT(*) FROM images WHERE job_id = '{job}'")[0][0]  # noqa: E731

    assert stopping.process.wait(PATIENCE) == 0, stopping.output()[-3000:]  # a clean stop, not a crash
    assert "warm shutdown" in stopping.output().lower(), stopping.output()[-3000:]  # Celery's answer to SIGTERM
    assert "stopped with the server" in stopping.output()  # at its next step, put back (jobs/run.py)
    status, attempts = shared.rows(f"SELECT status, attempts FROM jobs WHERE id = '{job}'")[0]
    assert (status, attempts) == ("queued", 0)  # back in the queue, the attempt not counted
    assert made() == 2  # it stopped mid-job, after its first batch

    Worker(shared, "rescuer")
    assert front.finished(job)["status"] == "done"
    waiting.join(PATIENCE)
    assert json.loads(answer["value"]["info"])["all_seeds"] == EIGHT_SEEDS  # its client waited through it
    seeds = shared.rows(f"SELECT seed FROM images WHERE job_id = '{job}' ORDER BY \"index\"")
    assert [seed for (seed,) in seeds] == EIGHT_SEEDS  # each seed once, in order
    assert shared.rows(f"SELECT attempts FROM jobs WHERE id = '{job}'") == [(1,)]  # the rescuer's only
    files_match_rows(shared)


def test_a_worker_with_models_runs_the_jobs_for_its_models_and_another_the_rest(shared):
    mini = ModelWorker(shared, "mini", "--models", "mini")
    general = Worker(shared, "general")
    front = FrontEnd(shared)  # its default model: tiny-random

    for_mini = front.post("/api/v1/jobs", {"prompt": "a red apple", "model": "mini", "n_samples": 1, "seed": 1,
                                           "steps": 2, **TINY})["id"]
    for_any = [front.post("/api/v1/jobs", {"prompt": f"any {number}", "n_samples": 1, "seed": number, "steps": 2,
                                           **TINY})["id"] for number in range(2)]
    for job in [for_mini, *for_any]:
        assert front.finished(job)["status"] == "done", job
    ran = lambda job: json.loads(shared.rows(f"SELECT request_json FROM jobs WHERE id = '{job}'")[0][0])["model"]  # noqa: E731
    assert ran(for_mini) == "mini" and {ran(job) for job in for_any} == {"tiny-random"}

    def counted(process, done: int):
        counts = worker_counts(front, process)
        return counts if counts.get("reverie_worker_jobs_total:done") == done else None

    on_mini = wait_for(lambda: counted(mini.process, 1), "the mini worker counted one job done", patience=60)
    on_general = wait_for(lambda: counted(general.process, 2), "the general worker counted two jobs done", patience=60)
    assert on_mini["reverie_worker_pictures_total"] == 1 and on_general["reverie_worker_pictures_total"] == 2
    files_match_rows(shared)
