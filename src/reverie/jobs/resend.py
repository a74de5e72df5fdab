"""Jobs whose Celery message was lost are sent again.

Redis holds the queued tasks; run without persistence (or restarted without its data, or flushed),
it loses them, and their jobs would stay `queued` in the database forever. So a front end that sends
a job's task also adds the job's id to the Redis set `reverie:sent`, and the id leaves the set when
the job ends (`forget_sent`, called where a front end hears a job end; the sweep below also drops
the ids of jobs that have ended, in case no front end heard it). Messages and the set live in the
same Redis, so they are lost together: a job that is active in the database but whose id is not in
the set has no message, and is sent again.

Every front end runs a `Resender` thread; every `RESEND_S` seconds one of them (whichever takes the
Redis lock `reverie:resend-lock` first) sweeps: every job `queued` in the database, or `running`
with no worker's lease (`reverie:lease:<id>`) held, older than `RESEND_S` and not in the set, has
its task sent again (and its id added). A duplicate message is harmless: the worker drops a job
that has ended, and retries one whose lease another worker holds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

log = logging.getLogger("reverie.server")

SENT = "reverie:sent"  # the ids of the jobs whose task is in the broker (sent, not ended)
LOCK = "reverie:resend-lock"  # held by the front end sweeping now
LEASES = "reverie:lease:"  # + job id: held by the worker running it (celery_engine takes it from here)
RESEND_S = float(os.environ.get("REVERIE_RESEND_S", 10))  # how often a sweep runs; settable for tests


def mark_sent(redis, job_id: str) -> None:
    """Record that the job's task is in the broker (call before sending it)."""
    redis.sadd(SENT, job_id)


def forget_sent(redis, job_id: str) -> None:
    """The job has ended: its task needs no sending again. Never raises (Redis may be away)."""
    try:
        redis.srem(SENT, job_id)
    except Exception as exc:  # the sweep drops it later
        log.debug("could not forget job %s as sent (%s)", job_id, exc)


def lost_jobs(gallery, redis, min_age_s: float = 0.0) -> list[str]:
    """The ids of the jobs active in the database that have no message in the broker: queued, or
    running with no lease held, created over `min_age_s` ago, and not in the sent set. Also drops
    from the set the ids of jobs that have ended."""
    from ..gallery.models import Job, utcnow
    from ..gallery.store import ACTIVE

    sent = {member.decode() for member in redis.smembers(SENT)}  # read before the database: see below
    with gallery.session() as db:
        active = db.execute(select(Job.id, Job.status, Job.created).where(Job.status.in_(ACTIVE))).all()
    active_ids = {job_id for job_id, _, _ in active}
    ended = sent - active_ids  # in the set before the database was read, and not active after: ended
    if ended:
        redis.srem(SENT, *ended)
    newest = utcnow() - timedelta(seconds=min_age_s)  # a job just queued may not be marked sent yet
    candidates = [job_id for job_id, status, created in active
                  if job_id not in sent and created <= newest]
    if not candidates:
        return []
    # Sent since the set was read (by a front end, or by another sweep): not lost.
    statuses = {job_id: status for job_id, status, _ in active}
    looks = redis.pipeline(transaction=False)
    for job_id in candidates:
        looks.sismember(SENT, job_id)
        looks.exists(LEASES + job_id)
    answers = looks.execute()
    return [job_id for job_id, member, lease in zip(candidates, answers[::2], answers[1::2])
            if not member and not (statuses[job_id] == "running" and lease)]


def resend_lost(gallery, redis, send: Callable[[str], None], min_age_s: float = 0.0) -> list[str]:
    """Send again the task of every lost job (see `lost_jobs`); their ids."""
    lost = lost_jobs(gallery, redis, min_age_s)
    for job_id in lost:
        mark_sent(redis, job_id)
        send(job_id)
        log.warning("job %s had no message in the broker (lost with a Redis restart?); its task is sent again", job_id)
    return lost


class Resender:
    """A front end's sweeping thread: every `every_s` seconds, under the Redis lock, `resend_lost`."""

    def __init__(self, gallery, redis, send: Callable[[str], None], every_s: float = RESEND_S):
        self.gallery, self.redis, self.send, self.every_s = gallery, redis, send, every_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Resender":
        self._thread = threading.Thread(target=self._loop, name="reverie-resend", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        if self._thread:
            self._thread.join(timeout)

    def sweep(self) -> list[str]:
        """One sweep, when no other front end is sweeping; the ids sent again."""
        lock = self.redis.lock(LOCK, timeout=max(30.0, self.every_s * 3), thread_local=False)
        if not lock.acquire(blocking=False):
            return []
        try:
            return resend_lost(self.gallery, self.redis, self.send, min_age_s=self.every_s)
        finally:
            try:
                lock.release()
            except Exception:  # lapsed (a slow sweep) or Redis gone: nothing to give back
                pass

    def _loop(self) -> None:
        while not self._stopped.wait(self.every_s):
            try:
                self.sweep()
            except Exception as exc:  # Redis or the database away for a moment: the next sweep tries again
                log.warning("the sweep for lost jobs failed (%s); trying again in %g s", exc, self.every_s)
