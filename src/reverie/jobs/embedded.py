"""The embedded engine (the default): one worker thread in the server's own process.

Jobs are rows in the gallery database, so a restart loses nothing: queued jobs wait; a job the
server stops (SIGTERM, Ctrl-C) goes back to the queue as it was; a job that was running when the
process died is queued again (once) by `Gallery.recover`. Live progress (step, total, a preview
picture) is kept in this process's memory (`LiveBoard`) for the pages and APIs that follow a job.
The worker takes a job with the queued jobs that can share its passes (batching.py).
"""

from __future__ import annotations

import logging
import shutil
import threading

from ..gallery.store import Gallery, NotFound
from .batching import DEFAULT_LIMIT, companions
from .live import Live, LiveBoard
from .run import run_job, run_jobs

log = logging.getLogger("reverie.server")


class EmbeddedQueue:
    """The job queue on the gallery's database, worked by one thread of this process."""

    def __init__(self, gallery: Gallery, studio, poll_seconds: float = 0.2, batch_limit: int = DEFAULT_LIMIT):
        self.gallery, self.studio = gallery, studio
        self.poll_seconds = poll_seconds
        self.batch_limit = batch_limit  # pictures per pass shared by compatible jobs (batching.py)
        self.board = LiveBoard(gallery)
        self.live: dict[str, Live] = self.board.live
        self._stop_job: set[str] = set()
        self._wake = threading.Event()
        self._halt = self.board.halted
        self._thread: threading.Thread | None = None
        self.current: list[str] = []  # the jobs running now

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
        self.board.halt()
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Halt, and wait (up to `timeout` seconds) for the running job to be put back."""
        self.halt()
        if self._thread:
            self._thread.join(timeout)

    # -- the queue -------------------------------------------------------------------------
    def submitted(self, job) -> None:
        """A job was queued in the gallery: the worker looks now rather than at its next poll."""
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        job = self.gallery.job(job_id)
        if job.status == "queued":
            self.gallery.finish_job(job_id, "cancelled")
            self.board.ended(job_id, "cancelled")
        elif job.status == "running":
            self._stop_job.add(job_id)

    # -- watching --------------------------------------------------------------------------
    async def finished(self, job_id: str, timeout: float):
        return await self.board.finished(job_id, timeout)

    async def changed(self, job_id: str, version: int, timeout: float) -> Live | None:
        return await self.board.changed(job_id, version, timeout)

    # -- running ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._halt.is_set():
            job = self.gallery.claim_next()
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            together, _ = companions(self.gallery, self.studio, job, self.batch_limit, self.gallery.claim_queued)
            jobs = [job, *together]
            self.current = [each.id for each in jobs]
            try:
                self._run(jobs)
            finally:
                self.current = []

    def _run(self, jobs: list) -> None:
        reports = [self._reporter(job.id) for job in jobs]
        cancelled = [lambda job_id=job.id: job_id in self._stop_job for job in jobs]
        if len(jobs) == 1:
            statuses = [run_job(self.gallery, self.studio, jobs[0], reports[0], cancelled[0], halting=self._halt.is_set)]
        else:
            statuses = run_jobs(self.gallery, self.studio, jobs, reports, cancelled, self._halt.is_set, self.batch_limit)
        for job, status in zip(jobs, statuses):
            if status in ("done", "cancelled"):
                self._stop_job.discard(job.id)

    def _reporter(self, job_id: str):
        return lambda ended=False, **changes: self.board.notify(job_id, ended, **changes)


