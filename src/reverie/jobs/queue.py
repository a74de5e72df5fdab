"""The job queue as the server sees it: one interface, two engines.

- `embedded.EmbeddedQueue` (the default): a worker thread in the server's process takes queued
  jobs from the gallery's database; `reverie serve` and nothing else to start.
- `celery_engine.CeleryQueue` (`reverie serve --broker redis://...`): the front end hands each job
  to Celery; `reverie worker` processes (one per device) run them; progress comes back over Redis.

Either way the gallery's database holds the jobs (status, pictures, credits) and
`run.run_job` runs one; the engines differ in who claims a job and how its progress travels.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ReverieError
from .live import Live


class EngineUnavailable(ReverieError):
    """The job engine did not take a job just queued (its broker does not answer). The job is
    ended as failed, its credit refunded, before this is raised: the server answers 503 and the
    client sends the request again later."""


class JobQueue(Protocol):
    live: dict[str, Live]  # job id -> its live state, as this process last heard it

    def start(self) -> None:
        """Start with the server (the embedded engine recovers its jobs and starts its worker)."""

    def halt(self) -> None:
        """Begin stopping, without waiting: waiting requests are answered ServerStopping."""

    def stop(self, timeout: float = 30.0) -> None:
        """Halt and wait (up to `timeout` s) for what this process runs to be put back."""

    def submitted(self, job) -> None:
        """A job was just queued in the gallery (its credit charged): have it run. Raises
        EngineUnavailable, the job failed and refunded, when the engine cannot take it."""

    def cancel(self, job_id: str) -> None:
        """Cancel a queued job now, or ask the worker running it to stop (its pictures stay)."""

    async def finished(self, job_id: str, timeout: float):
        """The job once it has ended; ServerStopping or JobTimeout first when so."""

    async def changed(self, job_id: str, version: int, timeout: float) -> Live | None:
        """The job's live state once its version is no longer `version`, or after `timeout` s."""
