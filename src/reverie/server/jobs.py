"""The job runner: one worker thread takes queued jobs from the gallery and runs them.

Jobs are rows in the gallery database, so a restart loses nothing: queued jobs wait; a job the
server stops (SIGTERM, Ctrl-C) goes back to the queue as it was; a job that was running when the
process died is queued again (once) by `Gallery.recover`. A job that runs again makes only the
pictures it does not have yet (`made`). Live progress (step, total, a preview picture) is kept
in memory for the pages and APIs that follow a job (a video's steps are its frames); finished
pictures go into the gallery one by one, as they are made, a video with its poster.

Requests that wait (for a job's end, or its next change) wait on asyncio futures that the worker
thread resolves: a waiting request holds no thread and runs no query.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import threading
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from ..errors import ReverieError
from ..gallery.store import FINAL, Gallery, NotFound
from ..models.own_loras import own_loras
from ..progress import ProgressEvent

log = logging.getLogger("reverie.server")
# Progress stages that count steps, and what a watcher is told the job is doing.
STEP_STAGES = {"denoise": "denoising", "dream": "dreaming", "frame": "making frames", "train": "training"}
# A video counts its frames: the steps of the frame being made only say so in the message.
FRAME_STAGE = "frame"


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


class ServerStopping(Exception):
    """The server stops before the job a request waits for has ended; the job is kept."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"the server is stopping; job {job_id} is kept and resumes at the next start "
                         f"(follow it at /api/v1/jobs/{job_id})")


class JobTimeout(Exception):
    """A job has not ended within the time a request waits for it; the job goes on."""

    def __init__(self, job_id: str, seconds: float):
        self.job_id = job_id
        super().__init__(f"job {job_id} has not ended after {seconds:g} s; it goes on: follow it at /api/v1/jobs/{job_id}")


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    final: bool  # woken only by the job's end (else by any change)


def _resolve(future: asyncio.Future, error: Exception | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class JobRunner:
    def __init__(self, gallery: Gallery, studio, poll_seconds: float = 0.2):
        self.gallery, self.studio = gallery, studio
        self.poll_seconds = poll_seconds
        self.live: dict[str, Live] = {}
        self._lock = threading.Lock()  # guards `live` changes and `_waiters`
        self._waiters: dict[str, list[_Waiter]] = {}
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
        self._sweep_work()
        self._thread = threading.Thread(target=self._loop, name="reverie-jobs", daemon=True)
        self._thread.start()

    def _sweep_work(self) -> None:
        """Remove the work folders of jobs that will not run again (nothing runs yet); a queued
        job's stays: a video goes on from the frames in it."""
        work = self.gallery.folder / "work"
        for folder in work.iterdir() if work.is_dir() else []:
            try:
                queued = self.gallery.job(folder.name).status == "queued"
            except NotFound:
                queued = False
            if not queued:
                shutil.rmtree(folder, ignore_errors=True)

    def halt(self) -> None:
        """Begin stopping, without waiting: the running job stops at its next step and goes back
        to the queue; every waiting request is answered that its job resumes at the next start."""
        self._halt.set()
        self._wake.set()
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for job_id, listed in waiters.items():
            for waiter in listed:
                self._call(waiter, ServerStopping(job_id))

    def stop(self, timeout: float = 30.0) -> None:
        """Halt, and wait (up to `timeout` seconds) for the running job to be put back."""
        self.halt()
        if self._thread:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        job = self.gallery.job(job_id)
        if job.status == "queued":
            self.gallery.finish_job(job_id, "cancelled")
            self._ended(job_id, "cancelled")
        elif job.status == "running":
            self._stop_job.add(job_id)

    # -- watching --------------------------------------------------------------------------
    def _notify(self, job_id: str, ended: bool = False, **changes) -> None:
        """Change the job's live state and wake whoever waits for a change (and for its end, when
        `ended`). Called from the worker thread and from request threads."""
        with self._lock:
            live = self.live.setdefault(job_id, Live())
            for key, value in changes.items():
                setattr(live, key, value)
            live.version += 1
            waiters = self._waiters.get(job_id, [])
            woken = [waiter for waiter in waiters if ended or not waiter.final]
            if woken:
                self._waiters[job_id] = [waiter for waiter in waiters if waiter not in woken]
        for waiter in woken:
            self._call(waiter, None)

    def _ended(self, job_id: str, status: str, message: str = "") -> None:
        self._notify(job_id, ended=True, stage=status, message=message)

    @staticmethod
    def _call(waiter: _Waiter, error: Exception | None) -> None:
        try:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future, error)
        except RuntimeError:  # that event loop has closed: nobody is waiting any more
            pass

    @asynccontextmanager
    async def _waiting(self, job_id: str, final: bool):
        """A future the worker resolves, registered for the duration of the `with`."""
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.get_running_loop().create_future(), final)
        with self._lock:
            self._waiters.setdefault(job_id, []).append(waiter)
        try:
            yield waiter.future
        finally:
            with self._lock:
                listed = self._waiters.get(job_id, [])
                if waiter in listed:
                    listed.remove(waiter)
                if not listed:
                    self._waiters.pop(job_id, None)

    async def finished(self, job_id: str, timeout: float):
        """The job, once done, failed or cancelled. Raises ServerStopping when the server stops
        first (the job is kept for the next start), JobTimeout after `timeout` seconds."""
        async with self._waiting(job_id, final=True) as ended:
            # Registered before looking: a job that ends in between still resolves `ended`.
            job = await run_in_threadpool(self.gallery.job, job_id)
            if job.status in FINAL:
                return job
            if self._halt.is_set():
                raise ServerStopping(job_id)
            try:
                await asyncio.wait_for(ended, timeout)
            except TimeoutError:
                raise JobTimeout(job_id, timeout) from None
        return await run_in_threadpool(self.gallery.job, job_id)

    async def changed(self, job_id: str, version: int, timeout: float) -> Live | None:
        """The job's live state once its version is no longer `version`, or after `timeout`
        seconds. Raises ServerStopping when the server stops."""
        async with self._waiting(job_id, final=False) as change:
            live = self.live.get(job_id)
            if self._halt.is_set():
                raise ServerStopping(job_id)
            if (live.version if live else -1) == version:
                try:
                    await asyncio.wait_for(change, timeout)
                except TimeoutError:
                    pass
        return self.live.get(job_id)

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
        made = self.gallery.made(job.id)
        if made:
            fields["made"] = made  # an earlier run made these: the method makes the rest
            log.info("job %s resumes with %d picture(s) already made", job.id, made)
        self._notify(job.id, stage="running", started=time.monotonic(), images_done=made)
        should_stop = lambda: job.id in self._stop_job or self._halt.is_set()  # noqa: E731
        try:
            stopped = self._halt.is_set() or self._run_method(job, fields, should_stop)
        except ReverieError as exc:
            self.gallery.finish_job(job.id, "failed", str(exc))
            self._ended(job.id, "failed", str(exc))
            return
        except Exception as exc:  # a bug: keep the server alive, keep the trace in the log
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.gallery.finish_job(job.id, "failed", f"internal error: {exc}")
            self._ended(job.id, "failed", "internal error")
            return
        if stopped and self._halt.is_set() and job.id not in self._stop_job:
            # The server is stopping, not the user: the job goes back to the queue, uncounted.
            self.gallery.requeue(job.id)
            self._notify(job.id, stage="queued", message="stopped with the server; resumes at the next start")
            log.info("job %s stopped with the server; it resumes at the next start", job.id)
            return
        status = "cancelled" if stopped else "done"
        self.gallery.finish_job(job.id, status)
        self._stop_job.discard(job.id)
        self._ended(job.id, status)

    def _run_method(self, job, fields: dict, should_stop) -> bool:
        """Run the job's request through the studio, whatever its method; each finished picture
        is moved into the gallery as it comes. True when it was stopped early."""
        from ..studio import make_request

        total = make_request(fields).candidate_count()
        self._notify(job.id, images_total=total)
        workdir = self.gallery.folder / "work" / job.id

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
                live = self.live.get(job.id)
                frame = f"frame {min(live.step + 1, live.total)} of {live.total}: " if live and live.total else ""
                changes = {"message": f"{frame}{STEP_STAGES[event.stage]} {event.step}/{event.total}"}
            elif event.stage in STEP_STAGES:
                changes = {"stage": STEP_STAGES[event.stage], "step": event.step, "total": event.total,
                           "message": event.message}
            elif event.stage == "rerank":
                changes = {"stage": "choosing", "images_done": event.step, "message": event.message}
            elif event.stage == "image" and event.payload.metadata.get("video") and self._halt.is_set() \
                    and job.id not in self._stop_job:
                pass  # a video cut short by the server stopping: the job resumes and makes it whole
            elif event.stage == "image":
                image = event.payload
                self.gallery.add_image(job, image.index, image.path, picture_prompt(image.metadata, fields), image.seed,
                                       image.metadata, poster=image.image)
                live = self.live.get(job.id)
                done = total if event.step == event.total else max(event.step, live.images_done if live else 0)
                changes = {"images_done": done, "preview": png_bytes(image.image)}
            if event.preview is not None:
                changes["preview"] = png_bytes(event.preview)
            if changes:
                self._notify(job.id, **changes)

        try:
            # The gallery keeps the single pictures (each moved in as it is made), so no grid. The
            # job sees its own user's LoRAs (and trains into their folder), nobody else's.
            with own_loras(self.gallery.lora_folder(job.user_id)):
                result = self.studio.run(fields, outdir=workdir, grid=False, run_folder=workdir, progress=on_progress,
                                         should_stop=should_stop, previews=True)
        finally:
            if not (self._halt.is_set() and job.id not in self._stop_job):
                shutil.rmtree(workdir, ignore_errors=True)  # a job stopped with the server keeps it for its next run
        return result.interrupted
