"""`GET /metrics`: what a load balancer and Prometheus read, in Prometheus's text format.

Aggregates only (no user, prompt or picture): jobs by status (the queue depth is `queued`),
pictures made in all and in the last five minutes (throughput), and whether this process's own
worker is busy. Read from the gallery's database, so every front end of a deployment reports the
same numbers.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..gallery.models import utcnow
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
    return render([
        ("reverie_jobs", "gauge", "Jobs by status; queued is the queue depth.",
         [({"status": status}, count) for status, count in counts.items()]),
        ("reverie_job_failures", "gauge", "Jobs that ended failed.", [({}, counts["failed"])]),
        ("reverie_pictures_made", "gauge", "Pictures (and videos) in the gallery, deleted ones not counted.",
         [({}, gallery.pictures_made())]),
        ("reverie_pictures_per_minute", "gauge", "Pictures made over the last five minutes, per minute.",
         [({}, recent / (RECENT.total_seconds() / 60))]),
        ("reverie_worker_busy", "gauge", "1 while this process's own worker runs a job (the embedded engine; "
                                         "a front end on Celery has none: see reverie_jobs running).",
         [({}, 1.0 if getattr(state.runner, "current", None) else 0.0)]),
    ])


@router.get("/metrics", include_in_schema=False, response_class=PlainTextResponse)
async def metrics(state: StudioState = Depends(get_state)) -> PlainTextResponse:
    text = await run_in_threadpool(_collect, state)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
