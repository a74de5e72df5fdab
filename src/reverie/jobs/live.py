"""What a watcher can know about a running job, and waiting for it to change without a thread.

`LiveBoard` keeps each job's `Live` state in this process and wakes the requests that wait on
it: asyncio futures that whoever learns of a change resolves (the embedded worker thread, or the
thread that listens to Redis for the Celery engine). A waiting request holds no thread and runs
no query.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from ..gallery.store import FINAL


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


class LiveBoard:
    """Live job states and the requests waiting on them, in one process.

    `recheck_s`: when the news of a job's end may come from another process (and so may be
    missed), `finished` also looks at the database this often; None trusts the news alone."""

    def __init__(self, gallery, live: dict | None = None, recheck_s: float | None = None):
        self.gallery = gallery
        self.live: dict[str, Live] = {} if live is None else live
        self.recheck_s = recheck_s
        self._lock = threading.Lock()  # guards `live` changes and `_waiters`
        self._waiters: dict[str, list[_Waiter]] = {}
        self.halted = threading.Event()

    def notify(self, job_id: str, ended: bool = False, **changes) -> None:
        """Change the job's live state and wake whoever waits for a change (and for its end, when
        `ended`). Called from any thread."""
        with self._lock:
            live = self.live.get(job_id)
            if live is None:
                live = self.live[job_id] = Live()
            for key, value in changes.items():
                setattr(live, key, value)
            live.version += 1
            waiters = self._waiters.get(job_id, [])
            woken = [waiter for waiter in waiters if ended or not waiter.final]
            if woken:
                self._waiters[job_id] = [waiter for waiter in waiters if waiter not in woken]
        for waiter in woken:
            self._call(waiter, None)

    def ended(self, job_id: str, status: str, message: str = "") -> None:
        self.notify(job_id, ended=True, stage=status, message=message)

    def halt(self) -> None:
        """Answer every waiting request that its job is kept (ServerStopping); later ones too."""
        self.halted.set()
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for job_id, listed in waiters.items():
            for waiter in listed:
                self._call(waiter, ServerStopping(job_id))

    @staticmethod
    def _call(waiter: _Waiter, error: Exception | None) -> None:
        try:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future, error)
        except RuntimeError:  # that event loop has closed: nobody is waiting any more
            pass

    @asynccontextmanager
    async def _waiting(self, job_id: str, final: bool):
        """A future that `notify` resolves, registered for the duration of the `with`."""
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
        first (the job is kept), JobTimeout after `timeout` seconds."""
        async with self._waiting(job_id, final=True) as ended:
            # Registered before looking: a job that ends in between still resolves `ended`.
            job = await run_in_threadpool(self.gallery.job, job_id)
            if job.status in FINAL:
                return job
            if self.halted.is_set():
                raise ServerStopping(job_id)
            if self.recheck_s is None:
                try:
                    await asyncio.wait_for(ended, timeout)
                except TimeoutError:
                    raise JobTimeout(job_id, timeout) from None
            else:
                await self._recheck(job_id, ended, timeout)
        return await run_in_threadpool(self.gallery.job, job_id)

    async def _recheck(self, job_id: str, ended: asyncio.Future, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ended.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeout(job_id, timeout)
            await asyncio.wait({ended}, timeout=min(left, self.recheck_s))
            if not ended.done() and (await run_in_threadpool(self.gallery.job, job_id)).status in FINAL:
                return
        ended.result()  # ServerStopping, when that is what resolved it

    async def changed(self, job_id: str, version: int, timeout: float) -> Live | None:
        """The job's live state once its version is no longer `version`, or after `timeout`
        seconds. Raises ServerStopping when the server stops."""
        async with self._waiting(job_id, final=False) as change:
            live = self.live.get(job_id)
            if self.halted.is_set():
                raise ServerStopping(job_id)
            if (live.version if live else -1) == version:
                try:
                    await asyncio.wait_for(change, timeout)
                except TimeoutError:
                    pass
        return self.live.get(job_id)
