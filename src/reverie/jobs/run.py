"""Running one claimed job through the studio: the same steps whichever worker runs it.

`run_job` runs the job's request through `Studio.run`, moves each finished picture into the
gallery as it is made (a video with its poster), reports live progress through `report`, and
ends the job in the gallery. A job that runs again makes only the pictures it does not have yet
(`Gallery.made`), so a job resumed after a stop or a crash makes each seed exactly once.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
import traceback
from collections.abc import Callable

from ..errors import ReverieError
from ..models.own_loras import own_loras
from ..progress import ProgressEvent
from .live import Live

log = logging.getLogger("reverie.server")
# Progress stages that count steps, and what a watcher is told the job is doing.
STEP_STAGES = {"denoise": "denoising", "dream": "dreaming", "frame": "making frames", "train": "training"}
# A video counts its frames: the steps of the frame being made only say so in the message.
FRAME_STAGE = "frame"
# How a run ended: the gallery's final statuses, or "requeued" (stopped with its worker, put back).
REQUEUED = "requeued"

# report(ended, **changes): a change of the job's live state (its end, when `ended`).
Report = Callable[..., None]


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def picture_prompt(metadata: dict, fields: dict) -> str:
    """The prompt the gallery shows and finds a picture by: the one it was made from (its
    template's variant, styled), else its own request's (a grid's cell has its own, a grid's
    sheet its base's, a video its prompts), else the job's."""
    own = metadata.get("prompt")
    if isinstance(own, dict) and own.get("prompt"):
        return own["prompt"]
    settings = metadata.get("settings") or {}
    return (settings.get("prompt") or (settings.get("base") or {}).get("prompt") or " | ".join(settings.get("prompts") or [])
            or fields.get("prompt", ""))


class Tracker:
    """The job's live state as its worker knows it, and the reporting of each change."""

    def __init__(self, report: Report):
        self.live, self._report = Live(), report

    def __call__(self, ended: bool = False, **changes) -> None:
        for key, value in changes.items():
            setattr(self.live, key, value)
        self.live.version += 1
        self._report(ended, **changes)


def run_job(gallery, studio, job, report: Report, cancelled: Callable[[], bool], halting: Callable[[], bool]) -> str:
    """Run a job the caller has claimed (marked running) and end it in the gallery.

    `cancelled()`: the user stopped it; `halting()`: its worker is stopping, and then the job goes
    back to the queue uncounted. Returns "done", "failed", "cancelled" or REQUEUED."""
    track = Tracker(report)
    fields = job_fields(gallery, job)
    track(stage="running", started=time.monotonic(), images_done=fields.get("made", 0))
    should_stop = lambda: cancelled() or halting()  # noqa: E731
    try:
        stopped = halting() or _run_method(gallery, studio, job, fields, track, should_stop, cancelled, halting)
    except Exception as exc:
        return _failed(gallery, job, track, exc)
    return _ended(gallery, job, track, stopped, cancelled, halting)


def run_jobs(gallery, studio, jobs: list, reports: list[Report], cancelled: list[Callable[[], bool]],
             halting: Callable[[], bool], limit: int) -> list[str]:
    """Run claimed jobs with one batch key (`sharing`) together: their pictures share forward
    passes of at most `limit` (dynamic batching), each job getting exactly its own seeds'
    pictures, its own progress and its own end. Returns each job's status, as `run_job`'s."""
    tracks = [Tracker(report) for report in reports]
    runs = []
    for job, track, stop in zip(jobs, tracks, cancelled):
        fields = job_fields(gallery, job)
        track(stage="running", started=time.monotonic(), images_done=0)
        on_progress = _progress_handler(gallery, job, fields, track, stop, halting)
        runs.append({"request": fields, "grid": False, "outdir": _workdir(gallery, job), "progress": on_progress,
                     "should_stop": lambda stop=stop: stop() or halting(), "previews": True})
    try:
        with own_loras(gallery.lora_folder(jobs[0].user_id)):  # one folder: it is in the key
            results = studio.run_shared(runs, limit)
    except Exception as exc:  # the shared run itself failed: every job fails with it
        return [_failed(gallery, job, track, exc) for job, track in zip(jobs, tracks)]
    finally:
        for job in jobs:
            shutil.rmtree(_workdir(gallery, job), ignore_errors=True)
    statuses = []
    for job, track, stop, result in zip(jobs, tracks, cancelled, results):
        if isinstance(result, Exception):
            statuses.append(_failed(gallery, job, track, result))
        else:
            statuses.append(_ended(gallery, job, track, halting() or result.interrupted, stop, halting))
    return statuses


def sharing(gallery, studio, job) -> tuple[object, int] | None:
    """How this job can share passes with others in `run_jobs`: (its key, the pictures one batch
    of it holds), or None when it runs alone. The key is its request's batch key, and its user's
    own LoRA folder when it has LoRAs in it (a tag names a file there)."""
    from ..studio import make_request

    if not hasattr(studio, "batch_key"):  # a studio that never shares passes
        return None
    try:
        request = make_request(job_fields(gallery, job))
        key = studio.batch_key(request)
    except ReverieError:
        return None  # a bad request fails when it runs, alone
    if key is None:
        return None
    folder = gallery.lora_folder(job.user_id)
    own = str(folder) if folder.is_dir() and any(folder.iterdir()) else None
    return (key, own), min(request.n_samples, request.picture_count())


def job_fields(gallery, job) -> dict:
    """The job's request fields, with the pictures an earlier run made (`made`) when it resumes."""
    fields = json.loads(job.request_json)
    fields.setdefault("mode", "dream" if job.kind == "dream" else "txt2img")  # jobs queued before requests had a mode
    made = gallery.made(job.id)
    if made:
        fields["made"] = made  # an earlier run made these: the method makes the rest
        log.info("job %s resumes with %d picture(s) already made", job.id, made)
    return fields


def _failed(gallery, job, track: Tracker, exc: Exception) -> str:
    if isinstance(exc, ReverieError):
        gallery.finish_job(job.id, "failed", str(exc))
        track(ended=True, stage="failed", message=str(exc))
        return "failed"
    # A bug: keep the worker alive, keep the trace in the log.
    log.error("job %s failed:\n%s", job.id, "".join(traceback.format_exception(exc)))
    gallery.finish_job(job.id, "failed", f"internal error: {exc}")
    track(ended=True, stage="failed", message="internal error")
    return "failed"


def _ended(gallery, job, track: Tracker, stopped: bool, cancelled, halting) -> str:
    if stopped and halting() and not cancelled():
        # The worker is stopping, not the user: the job goes back to the queue, uncounted.
        gallery.requeue(job.id)
        track(stage="queued", message="stopped with the server; resumes at the next start")
        log.info("job %s stopped with the server; it resumes at the next start", job.id)
        return REQUEUED
    status = "cancelled" if stopped else "done"
    gallery.finish_job(job.id, status)
    track(ended=True, stage=status, message="")
    return status


def _workdir(gallery, job):
    return gallery.folder / "work" / job.id


def _progress_handler(gallery, job, fields: dict, track: Tracker, cancelled, halting) -> Callable[[ProgressEvent], None]:
    """What the job's method reports, as the job's live state; each finished picture moved
    into the gallery as it comes."""
    from ..studio import make_request

    total = make_request(fields).candidate_count()
    track(images_total=total)
    live = track.live
    framing = False  # a video's frames are its steps once the first "frame" event came

    def on_progress(event: ProgressEvent) -> None:
        nonlocal framing
        changes = {}
        framing = framing or event.stage == FRAME_STAGE
        if event.stage == "load":
            changes = {"stage": "loading", "message": event.message}
        elif event.stage == "estimate":
            changes = {"message": event.message}
        elif event.stage == "video":
            changes = {"stage": "writing the video", "message": f"{event.step}/{event.total} frames written"}
        elif framing and event.stage in STEP_STAGES and event.stage != FRAME_STAGE:
            frame = f"frame {min(live.step + 1, live.total)} of {live.total}: " if live.total else ""
            changes = {"message": f"{frame}{STEP_STAGES[event.stage]} {event.step}/{event.total}"}
        elif event.stage in STEP_STAGES:
            changes = {"stage": STEP_STAGES[event.stage], "step": event.step, "total": event.total,
                       "message": event.message}
        elif event.stage == "rerank":
            changes = {"stage": "choosing", "images_done": event.step, "message": event.message}
        elif event.stage == "image" and event.payload.metadata.get("video") and halting() and not cancelled():
            pass  # a video cut short by the worker stopping: the job resumes and makes it whole
        elif event.stage == "image":
            image = event.payload
            gallery.add_image(job, image.index, image.path, picture_prompt(image.metadata, fields), image.seed,
                              image.metadata, poster=image.image)
            done = total if event.step == event.total else max(event.step, live.images_done)
            changes = {"images_done": done, "preview": png_bytes(image.image)}
        if event.preview is not None:
            changes["preview"] = png_bytes(event.preview)
        if changes:
            track(**changes)

    return on_progress


def _run_method(gallery, studio, job, fields: dict, track: Tracker, should_stop, cancelled, halting) -> bool:
    """Run the job's request through the studio, whatever its method; each finished picture
    is moved into the gallery as it comes. True when it was stopped early."""
    on_progress = _progress_handler(gallery, job, fields, track, cancelled, halting)
    workdir = _workdir(gallery, job)
    try:
        # The gallery keeps the single pictures (each moved in as it is made), so no grid. The
        # job sees its own user's LoRAs (and trains into their folder), nobody else's.
        with own_loras(gallery.lora_folder(job.user_id)):
            result = studio.run(fields, outdir=workdir, grid=False, run_folder=workdir, progress=on_progress,
                                should_stop=should_stop, previews=True)
    finally:
        if not (halting() and not cancelled()):
            shutil.rmtree(workdir, ignore_errors=True)  # a job stopped with its worker keeps it for its next run
    return result.interrupted
