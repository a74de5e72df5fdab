"""Each Celery worker's heartbeat and counts in Redis, for the front ends' `/metrics`.

A worker (`reverie worker`) keeps one hash, `reverie:worker:<host>-<pid>`, with its counts since
it started (jobs done, failed and cancelled, pictures made), whether it runs a job now, its device
and the time of its last beat. The whole hash is written at every beat (every `HEARTBEAT_S`
seconds, from a thread of its own, so a long job does not stop it) and at every change, with an
expiry of three beats: a worker that dies (SIGKILL, its machine gone) drops out of the metrics
within that time; one that stops cleanly removes its hash at once.

The counts live in the worker's memory, not in Redis: a hash lost with Redis comes back whole at
the next beat. They are Prometheus counters per worker, so they start at zero with each process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

log = logging.getLogger("reverie.server")

WORKERS = "reverie:worker:"  # + the worker's name: its hash
HEARTBEAT_S = float(os.environ.get("REVERIE_HEARTBEAT_S", 5))
BEATS_TO_LIVE = 3  # a hash not refreshed for this many beats has expired
ENDINGS = ("done", "failed", "cancelled")


def worker_name() -> str:
    """This process's name among the workers: <host>-<pid>."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerStats:
    """What one worker tells the front ends (every field a string or a number in its hash)."""

    name: str
    device: str = ""
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    pictures: int = 0
    busy: int = 0  # 1 while it runs a job
    started: float = field(default_factory=time.time)  # Unix time, as the worker's clock says
    beat: float = 0.0  # Unix time of the last beat

    @classmethod
    def from_hash(cls, name: str, fields: dict) -> "WorkerStats":
        text = {key.decode(): value.decode() for key, value in fields.items()}
        known = {key: type(getattr(cls(name), key))(value) for key, value in text.items()
                 if key in cls.__dataclass_fields__ and key != "name"}
        return cls(name, **known)


class Heartbeat:
    """A worker's hash in Redis, kept fresh from a thread until `stop`."""

    def __init__(self, redis, name: str | None = None, device: str = "", every_s: float = HEARTBEAT_S):
        self.redis, self.every_s = redis, every_s
        self.stats = WorkerStats(name or worker_name(), device)
        self.key = WORKERS + self.stats.name
        self._lock = threading.Lock()  # guards `stats`
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        self._write()
        self._thread = threading.Thread(target=self._beat, name="reverie-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and remove the hash: this worker is gone from the metrics now."""
        self._stopped.set()
        if self._thread:
            self._thread.join(self.every_s + 5)
        try:
            self.redis.delete(self.key)
        except Exception:  # Redis away: the hash expires by itself
            pass

    def busy(self, running: bool) -> None:
        with self._lock:
            self.stats.busy = int(running)
        self._write()

    def ended(self, status: str, pictures: int) -> None:
        """A job ended `status` (done, failed, cancelled) after making `pictures` pictures here."""
        with self._lock:
            if status in ENDINGS:
                setattr(self.stats, status, getattr(self.stats, status) + 1)
            self.stats.pictures += max(0, pictures)
        self._write()

    def _beat(self) -> None:
        while not self._stopped.wait(self.every_s):
            self._write()

    def _write(self) -> None:
        with self._lock:
            self.stats.beat = time.time()
            mapping = {key: value for key, value in asdict(self.stats).items() if key != "name"}
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.key, mapping=mapping)
            pipe.expire(self.key, max(1, round(self.every_s * BEATS_TO_LIVE)))
            pipe.execute()
        except Exception as exc:  # Redis away for a moment: the next beat writes it all again
            log.warning("heartbeat to the broker failed (%s); trying again in %g s", exc, self.every_s)


def alive_workers(redis) -> list[WorkerStats]:
    """Every worker whose hash has not expired, by name."""
    names = sorted(key.decode()[len(WORKERS):] for key in redis.scan_iter(match=WORKERS + "*", count=500))
    if not names:
        return []
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(WORKERS + name)
    return [WorkerStats.from_hash(name, fields) for name, fields in zip(names, pipe.execute()) if fields]
