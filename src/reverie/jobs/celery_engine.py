"""The distributed engine: Celery with Redis as broker and result backend, and Redis pub/sub for
live progress.

- A front end (`reverie serve --broker redis://...`) queues the job in the gallery's database
  (credit and capacity checked there, as ever), then sends the Celery task `reverie.run_job` with
  the job's id; it runs no worker thread.
- A worker (`reverie worker --broker redis://...`, one process per device, Celery's solo pool)
  runs the task: it claims the job in the database and runs it through `run.run_job`, exactly as
  the embedded worker does, writing pictures into the shared gallery folder and rows into the
  shared database.
- Every change of a job's live state is published on the channel `reverie:job:<id>` (and kept,
  with the newest preview, under `reverie:live:<id>` for a front end that starts listening late);
  every front end listens to all of them for its /events, /preview.png and A1111 progress.

Durability: tasks are acknowledged late (`acks_late`, `reject_on_worker_lost`, prefetch 1), so a
worker that dies mid-job leaves its message unacknowledged and the broker hands it out again
(after `visibility_timeout`). A lease in Redis (`reverie:lease:<id>`, renewed while the job runs)
keeps two workers from running one job at once; the gallery's `made` count and its one picture
per place make the job that runs again make each seed exactly once. A message Redis lost (a restart
without its data) is sent again by a front end's sweep (resend.py: the `reverie:sent` set).

Metrics: each worker keeps its heartbeat and counts in Redis (heartbeat.py); a front end's
`/metrics` reads them (`CeleryQueue.workers`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict

from kombu.utils.url import maybe_sanitize_url

from ..errors import ReverieError
from ..gallery.store import FINAL, MAX_ATTEMPTS, NotFound
from .batching import DEFAULT_LIMIT, companions
from .heartbeat import Heartbeat, alive_workers, worker_name
from .live import Live, LiveBoard
from .queue import EngineUnavailable
from .resend import LEASES, Resender, forget_sent, mark_sent
from .run import REQUEUED, run_job, run_jobs

log = logging.getLogger("reverie.server")

TASK = "reverie.run_job"
DEFAULT_QUEUE = "reverie"
CHANNELS = "reverie:job:"  # + job id: its live changes, as JSON
SNAPSHOTS = "reverie:live:"  # + job id: its whole live state, as JSON
CANCELS = "reverie:cancel:"  # + job id: set when a user cancels a running job
MODEL_QUEUES = "reverie:model-queues"  # the models some worker serves on a queue of their own
KEEP_S = 24 * 3600  # snapshots and cancel marks expire after a day
# How long an unacknowledged task waits before the broker gives it to another worker, and how long
# a worker's lease on a job lasts unless renewed (a third of it apart). Settable for tests.
VISIBILITY_TIMEOUT_S = float(os.environ.get("REVERIE_VISIBILITY_TIMEOUT", 300))
LEASE_S = float(os.environ.get("REVERIE_LEASE_S", 30))


class BrokerError(ReverieError):
    """The broker URL is not a Redis URL, or Redis does not answer there."""


def check_broker_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise BrokerError(f"--broker {url!r}: give a Redis URL, e.g. redis://localhost:6379/0 (Celery's broker here is Redis)")
    return url


def connect_redis(url: str):
    """A Redis client for `url`, checked with a PING; BrokerError names what to start or fix."""
    import redis

    client = redis.Redis.from_url(check_broker_url(url))
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BrokerError(f"the broker at {url} does not answer ({exc}); start redis-server there or fix --broker") from None
    return client


def model_queue(model: str) -> str:
    return f"{DEFAULT_QUEUE}.model.{model}"


def make_celery(broker: str):
    """The Celery app: Redis as broker and result backend, late acknowledgement, one task at a time."""
    from celery import Celery

    app = Celery("reverie", broker=check_broker_url(broker), backend=broker)
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    app.conf.update(
        task_acks_late=True,  # acknowledged when the job has ended, not when it starts
        task_reject_on_worker_lost=True,  # a worker process that dies gives its task back
        worker_prefetch_multiplier=1,  # a worker holds only the job it runs
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_transport_options=transport, result_backend_transport_options=transport,
        result_expires=KEEP_S, broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK, bind=True, max_retries=None)
    def run_job_task(task, job_id: str) -> str:
        if _WORKER is None:
            raise RuntimeError("reverie.run_job runs in `reverie worker` processes only")
        return _WORKER.run(task, job_id)

    return app


# -- live state on the wire ------------------------------------------------------------------
def encode_changes(changes: dict) -> dict:
    """Live changes as JSON: the preview in base64, the start as seconds ago (clocks differ)."""
    wire = dict(changes)
    if wire.get("preview") is not None:
        wire["preview"] = base64.b64encode(wire["preview"]).decode()
    if "started" in wire:
        wire["started_ago"] = time.monotonic() - wire.pop("started")
    wire.pop("version", None)  # each process counts its own changes
    return wire


def decode_changes(wire: dict) -> dict:
    changes = {key: value for key, value in wire.items() if key in Live.__dataclass_fields__ and key != "version"}
    if changes.get("preview") is not None:
        changes["preview"] = base64.b64decode(changes["preview"])
    if "started_ago" in wire:
        changes["started"] = time.monotonic() - float(wire["started_ago"])
    return changes


class RemoteLive(dict):
    """Job id -> Live, as this front end heard it; a job it has not heard of is looked up in Redis
    (its snapshot), so a front end that started late still shows a running job's progress."""

    def __init__(self, redis):
        super().__init__()
        self._redis = redis

    def get(self, job_id, default=None):
        live = super().get(job_id)
        if live is None:
            try:
                raw = self._redis.get(SNAPSHOTS + job_id)
            except Exception:  # Redis away: no progress to show, the job's row still tells its status
                raw = None
            if raw is None:
                return default
            live = self.setdefault(job_id, Live(**decode_changes(json.loads(raw))))
        return live


# -- the front end's side ----------------------------------------------------------------------
class CeleryQueue:
    """The job queue of a front end: jobs go to Celery workers, their progress comes over Redis."""

    def __init__(self, gallery, broker: str, recheck_s: float = 2.0):
        self.gallery, self.broker = gallery, broker
        self.redis = connect_redis(broker)
        self.app = make_celery(broker)
        self.board = LiveBoard(gallery, RemoteLive(self.redis), recheck_s=recheck_s)
        self.live = self.board.live
        self._listener: threading.Thread | None = None
        self.resender = Resender(gallery, self.redis, self._resend)  # sends again the jobs lost with Redis

    def start(self) -> None:
        self._listener = threading.Thread(target=self._listen, name="reverie-progress", daemon=True)
        self._listener.start()
        self.resender.start()

    def halt(self) -> None:
        self.board.halt()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening; the jobs go on on their workers."""
        self.halt()
        self.resender.stop()
        if self._listener:
            self._listener.join(timeout)

    def submitted(self, job) -> None:
        """Send the job's task. When the broker does not take it, the job is ended as failed (its
        credit refunded) and EngineUnavailable raised: the client is told 503 and sends it again.
        Ending it, rather than leaving it queued, means no job waits for a message that was never
        sent; should the message have gone out after all, its worker finds the job ended and drops it."""
        import redis
        from kombu.exceptions import OperationalError

        try:
            mark_sent(self.redis, job.id)  # before sending: a sweep never sends again a job whose message is in Redis
            self._send(job)
        except (redis.RedisError, OperationalError, OSError) as exc:
            forget_sent(self.redis, job.id)
            log.error("job %s was not sent: the broker did not answer (%s); it is failed and refunded", job.id, exc)
            self.gallery.finish_job(job.id, "failed", "not sent: the job broker did not answer; send the request again")
            raise EngineUnavailable(f"the job broker ({maybe_sanitize_url(self.broker)}) does not answer, so the job "
                                    "was not queued and nothing was charged; try again shortly (if it lasts, "
                                    "start redis-server or fix the front end's --broker)") from None

    def _send(self, job) -> None:
        """Send the job's task, to its model's queue when some worker serves that model alone."""
        model = json.loads(job.request_json).get("model")
        queue = model_queue(model) if model and self.redis.sismember(MODEL_QUEUES, model) else DEFAULT_QUEUE
        self.app.send_task(TASK, args=[job.id], task_id=job.id, queue=queue)

    def _resend(self, job_id: str) -> None:
        self._send(self.gallery.job(job_id))

    def wake(self) -> None:
        """Nothing to wake here: the workers take jobs from the broker."""

    def workers(self):
        """The workers alive now, with their counts (heartbeat.WorkerStats), for /metrics."""
        return alive_workers(self.redis)

    def cancel(self, job_id: str) -> None:
        job = self.gallery.job(job_id)
        if job.status == "queued":
            self.gallery.finish_job(job_id, "cancelled")  # its task finds it ended and does nothing
            publish(self.redis, job_id, True, {"stage": "cancelled", "message": ""})
        elif job.status == "running":
            self.redis.set(CANCELS + job_id, 1, ex=KEEP_S)

    async def finished(self, job_id: str, timeout: float):
        return await self.board.finished(job_id, timeout)

    async def changed(self, job_id: str, version: int, timeout: float) -> Live | None:
        return await self.board.changed(job_id, version, timeout)

    def _listen(self) -> None:
        """Hear every job's changes until the server halts; reconnect when Redis goes away."""
        import redis

        while not self.board.halted.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(CHANNELS + "*")
                while not self.board.halted.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message["type"] == "pmessage":
                        self._heard(message["channel"].decode()[len(CHANNELS):], json.loads(message["data"]))
                pubsub.close()
            except redis.RedisError as exc:
                log.warning("progress from the broker interrupted (%s); listening again", exc)
                time.sleep(1.0)

    def _heard(self, job_id: str, message: dict) -> None:
        if message.get("ended"):
            forget_sent(self.redis, job_id)  # its task is done with: nothing to send again
        self.board.notify(job_id, bool(message.get("ended")), **decode_changes(message.get("changes", {})))


def publish(redis, job_id: str, ended: bool, changes: dict, live: Live | None = None) -> None:
    """Tell every front end of a job's change; keep its whole state (`live`) for late ones."""
    pipe = redis.pipeline(transaction=False)
    if live is not None:
        pipe.set(SNAPSHOTS + job_id, json.dumps(encode_changes(asdict(live))), ex=KEEP_S)
    pipe.publish(CHANNELS + job_id, json.dumps({"ended": ended, "changes": encode_changes(changes)}))
    pipe.execute()


# -- the worker's side ---------------------------------------------------------------------------
_WORKER: "JobWorker | None" = None  # the worker of this process (`reverie worker`), run by the task


class JobWorker:
    """Runs `reverie.run_job` tasks in a worker process: claims the job (and the queued jobs that
    can share its passes, batching.py), runs them, reports them."""

    def __init__(self, gallery, studio, redis, name: str, lease_s: float = LEASE_S, heartbeat: Heartbeat | None = None,
                 batch_limit: int = DEFAULT_LIMIT):
        self.gallery, self.studio, self.redis, self.name = gallery, studio, redis, name
        self.lease_s = lease_s
        self.heartbeat = heartbeat  # this worker's counts for the metrics, when it keeps them
        self.batch_limit = batch_limit
        self.halt = threading.Event()  # set when the worker is asked to stop (SIGTERM, Ctrl-C)

    def run(self, task, job_id: str) -> str:
        leases: dict = {}
        if self._lease(job_id, leases) is None:
            # Another worker runs it now (a message handed out twice, or a companion of its
            # jobs): look again once its lease could lapse.
            raise task.retry(countdown=self.lease_s)
        lost = threading.Event()
        renewing = threading.Thread(target=self._renew, args=(leases, lost), daemon=True)
        renewing.start()
        try:
            job = self._claim(job_id)
            if job is None:
                return "ended"
            together, _ = companions(self.gallery, self.studio, job, self.batch_limit,
                                     lambda other: self._take(other, leases))
            status = self._run([job, *together], lost)[0]
        finally:
            lost.set()  # also stops the renewing
            renewing.join()
            for lease in list(leases.values()):
                try:
                    lease.release()
                except Exception:  # lapsed: nothing to give back
                    pass
        if status == REQUEUED:
            raise task.retry(countdown=1)  # sent again before this one is acknowledged
        return status

    def _lease(self, job_id: str, leases: dict):
        """The job's lease, held by this worker (kept in `leases`), or None when another holds it."""
        lease = self.redis.lock(LEASES + job_id, timeout=self.lease_s, thread_local=False)
        if not lease.acquire(blocking=False):
            return None
        leases[job_id] = lease
        return lease

    def _take(self, job_id: str, leases: dict):
        """A queued job taken to share the passes of the job this worker runs: its lease first (as
        its own message's worker would), then the claim; None when someone else has it."""
        lease = self._lease(job_id, leases)
        if lease is None:
            return None
        job = self.gallery.claim_queued(job_id)
        if job is None:
            leases.pop(job_id)
            lease.release()
        else:
            log.info("job %s shares the passes of the job %s runs", job_id, self.name)
        return job

    def _renew(self, leases: dict, lost: threading.Event) -> None:
        while not lost.wait(self.lease_s / 3):
            try:
                for lease in list(leases.values()):  # companions join while it renews
                    lease.reacquire()
            except Exception as exc:  # lost (Redis restarted, or this process stalled past its lease)
                log.error("lost the lease on a job (%s); its jobs go back to the queue", exc)
                lost.set()

    def _claim(self, job_id: str):
        """The job marked running by this worker, or None when it has ended (or is unknown). A job
        left running holds no lease, so its worker is gone: it is taken over, counting the attempt."""
        try:
            job = self.gallery.job(job_id)
        except NotFound:
            log.warning("job %s is not in the gallery; its task is dropped (is --database the front ends'?)", job_id)
            return None
        if job.status in FINAL:
            return None
        if job.status == "running":
            self.gallery.remove_orphans(job)  # files its worker wrote without their rows
            if job.attempts >= MAX_ATTEMPTS:
                message = "the worker stopped while this job ran, twice"
                self.gallery.finish_job(job_id, "failed", message)
                publish(self.redis, job_id, True, {"stage": "failed", "message": message})
                return None
            log.info("job %s: its worker stopped while it ran; %s takes it over", job_id, self.name)
        return self.gallery.claim(job_id)

    def _run(self, jobs: list, lost: threading.Event) -> list[str]:
        """Run the jobs (one, or several sharing passes); each job's status."""
        reports = [self._reporter(job.id) for job in jobs]
        cancelled = [self._cancel_check(job.id) for job in jobs]
        halting = lambda: self.halt.is_set() or lost.is_set()  # noqa: E731
        made_before = [self.gallery.made(job.id) for job in jobs] if self.heartbeat else []
        statuses = [REQUEUED] * len(jobs)
        if self.heartbeat:
            self.heartbeat.busy(True)
        try:
            if len(jobs) == 1:
                statuses = [run_job(self.gallery, self.studio, jobs[0], reports[0], cancelled[0], halting)]
            else:
                statuses = run_jobs(self.gallery, self.studio, jobs, reports, cancelled, halting, self.batch_limit)
        finally:
            if self.heartbeat:
                self.heartbeat.busy(False)
                for job, status, before in zip(jobs, statuses, made_before):
                    self.heartbeat.ended(status, self.gallery.made(job.id) - before)
        return statuses

    def _reporter(self, job_id: str):
        live = Live()

        def report(ended: bool = False, **changes) -> None:
            for key, value in changes.items():
                setattr(live, key, value)
            publish(self.redis, job_id, ended, changes, live)

        return report

    def _cancel_check(self, job_id: str):
        cancel_key, checked = CANCELS + job_id, [0.0, False]

        def cancelled() -> bool:
            if time.monotonic() - checked[0] > 0.5:  # one look at Redis per half second at most
                checked[:] = [time.monotonic(), bool(self.redis.exists(cancel_key))]
            return checked[1]

        return cancelled


def start_worker(broker: str, data, database: str | None = None, device: str = "auto",
                 models: list[str] | None = None, loglevel: str = "INFO", batch_limit: int = DEFAULT_LIMIT) -> None:
    """Run a Celery worker in this process (until it is stopped): the solo pool, one job at a time,
    on the default queue, or on the queues of `models` when given."""
    global _WORKER
    from celery.signals import worker_shutting_down

    from ..gallery.store import Gallery
    from ..studio import Studio, load_methods

    redis = connect_redis(broker)
    load_methods()  # every method, torch and diffusers imported now, in one thread
    gallery = Gallery(data, database)
    name = f"reverie-{device}-{os.getpid()}@{socket.gethostname()}"
    heartbeat = Heartbeat(redis, worker_name(), device)
    _WORKER = JobWorker(gallery, Studio(device=device), redis, name, heartbeat=heartbeat, batch_limit=batch_limit)
    worker_shutting_down.connect(lambda **_: _WORKER.halt.set(), weak=False)
    queues = [model_queue(model) for model in models] if models else [DEFAULT_QUEUE]
    if models:
        redis.sadd(MODEL_QUEUES, *models)
    app = make_celery(broker)
    heartbeat.start()
    try:
        app.worker_main(["worker", "--pool", "solo", "--concurrency", "1", "--queues", ",".join(queues),
                         "--hostname", name, "--loglevel", loglevel, "--without-gossip", "--without-mingle"])
    finally:
        heartbeat.stop()
