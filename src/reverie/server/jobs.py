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
PREVIEW_EVERY = 2  # denoising steps between live previews


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
        request = json.loads(job.request_json)
        self._notify(job.id, stage="running", started=time.monotonic())
        should_stop = lambda: job.id in self._stop_job or self._halt.is_set()  # noqa: E731
        try:
            if job.kind == "dream":
                stopped = self._run_dream(job, request, should_stop)
            else:
                stopped = self._run_generate(job, request, should_stop)
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

    def _run_generate(self, job, request: dict, should_stop) -> bool:
        from ..methods.diffusion.preview import preview_image

        rerank = request.get("rerank", 1)  # with candidates, the bar counts candidates made
        total = request.get("n_samples", 1) * request.get("n_iter", 1) * rerank
        self._notify(job.id, images_total=total)
        outdir = self.gallery.folder / "work" / job.id
        components = {}

        def on_progress(event: ProgressEvent) -> None:
            if event.stage == "load":
                self._notify(job.id, stage="loading", message=event.message)
            elif event.stage == "denoise":
                changes = {"stage": "denoising", "step": event.step, "total": event.total, "message": ""}
                if event.payload is not None and (event.step % PREVIEW_EVERY == 0 or event.step == event.total):
                    vae = components.get("vae")
                    if vae is not None:
                        changes["preview"] = png_bytes(preview_image(event.payload, vae, 256))
                self._notify(job.id, **changes)
            elif event.stage == "rerank":
                self._notify(job.id, stage="choosing", images_done=event.step, message=event.message)
            elif event.stage == "image":
                image = event.payload
                self.gallery.add_image(job, image.path, request.get("prompt", ""), image.seed, image.metadata)
                image.path.unlink(missing_ok=True)
                self._notify(job.id, images_done=event.step if rerank == 1 else total, preview=png_bytes(image.image))

        def remember_model(event: ProgressEvent) -> None:
            if event.stage == "encode" and "vae" not in components:
                model = self.studio.loaded_model(request.get("model"))
                if model is not None:
                    components["vae"] = model.vae
            on_progress(event)

        # The gallery keeps the single pictures (each moved in as it is made), so no grid.
        result = self.studio.generate(request, outdir=outdir, grid=False, progress=remember_model, should_stop=should_stop)
        shutil.rmtree(outdir, ignore_errors=True)
        return result.interrupted

    def _run_dream(self, job, request: dict, should_stop) -> bool:
        iterations = request.get("iterations", 300)
        self._notify(job.id, images_total=1, total=iterations)
        run_dir = self.gallery.folder / "dreams" / job.id

        def on_progress(event: ProgressEvent) -> None:
            if event.stage == "dream":
                changes = {"stage": "dreaming", "step": event.step, "total": event.total, "message": event.message}
                if event.payload is not None:
                    changes["preview"] = png_bytes(event.payload)
                self._notify(job.id, **changes)

        report = self.studio.dream(request, folder=run_dir, progress=on_progress, should_stop=should_stop)
        from ..outputs.metadata import read_png_info

        metadata = read_png_info(report.picture).get("reverie") or {}
        self.gallery.add_image(job, report.picture, request.get("prompt", ""), metadata.get("seed", 0), metadata)
        self._notify(job.id, images_done=1)
        return report.stopped == "interrupted"
