"""`GET /metrics`: what a load balancer and Prometheus read, in Prometheus's text format.

Aggregates only (no user, prompt or picture): jobs by status (the queue depth is `queued`),
pictures made in all and in the last five minutes (throughput), and whether this process's own
worker is busy. Read from the gallery's database, so every front end of a deployment reports the
same numbers.

A front end on Celery has no worker of its own: it reports each worker's heartbeat and counts
from Redis instead (jobs/heartbeat.py), labelled `worker="<host>-<pid>"`, and how many are alive.
"""

from __future__ import annotations

import time
from datetime import timedelta

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..gallery.models import utcnow
from ..jobs.heartbeat import ENDINGS
from .state import StudioState, get_state

router = APIRouter()
RECENT = timedelta(minutes=5)


def render(metrics: list[tuple[str, str, str, list[tuple[dict, float]]]]) -> str:
    """Prometheus's text exposition format: (name, type, help, [(labels, value)])."""
    lines = []
    for name, kind, text, samples in metrics:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            shown = ",".join(f'{key}="{value}"' for key, value in labels.items())
            lines.append(f"{name}{{{shown}}} {value:g}" if shown else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


def _collect(state: StudioState) -> str:
    gallery = state.gallery
    counts = gallery.job_counts()
    recent = gallery.pictures_made(since=utcnow() - RECENT)
    workers = getattr(state.runner, "workers", None)  # the Celery engine's: its workers in Redis
    if workers is None:
        return render(_gallery_metrics(gallery, counts, recent) + [
            ("reverie_worker_busy", "gauge", "1 while this process's own worker runs a job.",
             [({}, 1.0 if getattr(state.runner, "current", None) else 0.0)]),
        ])
    try:
        alive, broker_up = workers(), 1
    except Exception:  # Redis away: say so, and still report what the database knows
        alive, broker_up = [], 0
    return render(_gallery_metrics(gallery, counts, recent) + [
        ("reverie_broker_up", "gauge", "1 when the broker (Redis) answered this scrape.", [({}, broker_up)]),
    ] + _worker_metrics(alive))


def _gallery_metrics(gallery, counts: dict, recent: int) -> list:
    return [
        ("reverie_jobs", "gauge", "Jobs by status; queued is the queue depth.",
         [({"status": status}, count) for status, count in counts.items()]),
        ("reverie_job_failures", "gauge", "Jobs that ended failed.", [({}, counts["failed"])]),
        ("reverie_pictures_made", "gauge", "Pictures (and videos) in the gallery, deleted ones not counted.",
         [({}, gallery.pictures_made())]),
        ("reverie_pictures_per_minute", "gauge", "Pictures made over the last five minutes, per minute.",
         [({}, recent / (RECENT.total_seconds() / 60))]),
    ]


def _worker_metrics(workers: list) -> list:
    """Each Celery worker's counts since it started, as its last heartbeat told them."""
    now = time.time()
    each = lambda value: [({"worker": worker.name}, value(worker)) for worker in workers]  # noqa: E731
    return [
        ("reverie_workers_alive", "gauge", "Workers whose heartbeat has not expired.", [({}, len(workers))]),
        ("reverie_worker_busy", "gauge", "1 while the worker runs a job.", each(lambda worker: worker.busy)),
        ("reverie_worker_pictures_total", "counter", "Pictures the worker made since it started.",
         each(lambda worker: worker.pictures)),
        ("reverie_worker_jobs_total", "counter", "Jobs the worker ended since it started, by how they ended.",
         [({"worker": worker.name, "status": status}, getattr(worker, status)) for worker in workers for status in ENDINGS]),
        ("reverie_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last heartbeat (by this clock).",
         each(lambda worker: max(0.0, now - worker.beat))),
    ]


@router.get("/metrics", include_in_schema=False, response_class=PlainTextResponse)
async def metrics(state: StudioState = Depends(get_state)) -> PlainTextResponse:
    text = await run_in_threadpool(_collect, state)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
