"""The job runner: one worker thread takes queued jobs from the gallery and runs them.

Jobs are rows in the gallery database, so a restart loses nothing: queued jobs wait, and a job
that was running when the process died is queued again (once) by `Gallery.recover`. Live
progress (step, total, a preview picture) is kept in memory for the pages and APIs that follow
a job; finished pictures go into the gallery one by one, as they are made.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field

from ..errors import ReverieError
from ..gallery.store import Gallery
from ..progress import ProgressEvent

log = logging.getLogger("reverie.server")
# Progress stages that count steps, and what a watcher is told the job is doing.
STEP_STAGES = {"denoise": "denoising", "dream": "dreaming"}


@dataclass
class Live:
    """What a watcher can know about a job while it runs."""

    stage: str = "queued"
    step: int = 0
    total: int = 0
    images_done: int = 0
    images_total: int = 0
    message: str = ""
    preview: bytes | None = None  # PNG
    version: int = 0  # bumped on every change, for long-polling and server-sent events
    started: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        if self.images_total:
            done = self.images_done + (self.step / self.total if self.total else 0.0)
            return min(1.0, done / self.images_total)
        return self.step / self.total if self.total else 0.0


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class JobRunner:
    def __init__(self, gallery: Gallery, studio, poll_seconds: float = 0.2):
        self.gallery, self.studio = gallery, studio
        self.poll_seconds = poll_seconds
        self.live: dict[str, Live] = {}
        self.changed = threading.Condition()
        self._stop_job: set[str] = set()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: str | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        requeued = self.gallery.recover()
        if requeued:
            log.info("re-queued %d job(s) that were running when the server stopped", len(requeued))
        self._thread = threading.Thread(target=self._loop, name="reverie-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._halt.set()
        self._wake.set()
        if self.current:
            self._stop_job.add(self.current)
        if self._thread:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        job = self.gallery.job(job_id)
        if job.status == "queued":
            self.gallery.finish_job(job_id, "cancelled")
            self._notify(job_id, stage="cancelled")
        elif job.status == "running":
            self._stop_job.add(job_id)

    # -- watching --------------------------------------------------------------------------
    def _notify(self, job_id: str, **changes) -> None:
        with self.changed:
            live = self.live.setdefault(job_id, Live())
            for key, value in changes.items():
                setattr(live, key, value)
            live.version += 1
            self.changed.notify_all()

    def wait_for_change(self, job_id: str, version: int, timeout: float) -> Live | None:
        with self.changed:
            self.changed.wait_for(lambda: self.live.get(job_id, Live()).version != version, timeout)
            return self.live.get(job_id)

    def wait_until_finished(self, job_id: str, timeout: float = 3600.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.gallery.job(job_id)
            if job.status not in ("queued", "running"):
                return job
            live = self.live.get(job_id)
            self.wait_for_change(job_id, live.version if live else -1, min(1.0, deadline - time.monotonic()))
        return self.gallery.job(job_id)

    # -- running ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._halt.is_set():
            job = self.gallery.claim_next()
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self.current = job.id
            try:
                self._run(job)
            finally:
                self.current = None

    def _run(self, job) -> None:
        fields = json.loads(job.request_json)
        fields.setdefault("mode", "dream" if job.kind == "dream" else "txt2img")  # jobs queued before requests had a mode
        self._notify(job.id, stage="running", started=time.monotonic())
        should_stop = lambda: job.id in self._stop_job or self._halt.is_set()  # noqa: E731
        try:
            stopped = self._run_method(job, fields, should_stop)
        except ReverieError as exc:
            self.gallery.finish_job(job.id, "failed", str(exc))
            self._notify(job.id, stage="failed", message=str(exc))
            return
        except Exception as exc:  # a bug: keep the server alive, keep the trace in the log
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.gallery.finish_job(job.id, "failed", f"internal error: {exc}")
            self._notify(job.id, stage="failed", message="internal error")
            return
        if stopped and self._halt.is_set() and job.id not in self._stop_job:
            return  # the server is shutting down: the job stays "running" and is re-run after restart
        status = "cancelled" if stopped else "done"
        self.gallery.finish_job(job.id, status)
        self._stop_job.discard(job.id)
        self._notify(job.id, stage=status)

    def _run_method(self, job, fields: dict, should_stop) -> bool:
        """Run the job's request through the studio, whatever its method; each finished picture
        is moved into the gallery as it comes. True when it was stopped early."""
        from ..studio import make_request

        total = make_request(fields).candidate_count()
        self._notify(job.id, images_total=total)
        workdir = self.gallery.folder / "work" / job.id

        def on_progress(event: ProgressEvent) -> None:
            changes = {}
            if event.stage == "load":
                changes = {"stage": "loading", "message": event.message}
            elif event.stage in STEP_STAGES:
                changes = {"stage": STEP_STAGES[event.stage], "step": event.step, "total": event.total,
                           "message": event.message}
            elif event.stage == "rerank":
                changes = {"stage": "choosing", "images_done": event.step, "message": event.message}
            elif event.stage == "image":
                image = event.payload
                self.gallery.add_image(job, image.path, fields.get("prompt", ""), image.seed, image.metadata)
                live = self.live.get(job.id)
                done = total if event.step == event.total else max(event.step, live.images_done if live else 0)
                changes = {"images_done": done, "preview": png_bytes(image.image)}
            if event.preview is not None:
                changes["preview"] = png_bytes(event.preview)
            if changes:
                self._notify(job.id, **changes)

        try:
            # The gallery keeps the single pictures (each moved in as it is made), so no grid.
            result = self.studio.run(fields, outdir=workdir, grid=False, run_folder=workdir, progress=on_progress,
                                     should_stop=should_stop, previews=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return result.interrupted
