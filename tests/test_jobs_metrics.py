"""Per-worker metrics with a real redis-server: each Celery worker's heartbeat and counts in Redis
(jobs/heartbeat.py), and a front end on that broker reporting them on /metrics with a `worker`
label. The workers here are Heartbeat objects as `reverie worker` keeps one; the whole path with
real worker processes is in test_deploy_cluster.py. Nothing is timed but the expiry, which is the
point of a heartbeat."""

from __future__ import annotations

import redis as redis_client
from fastapi.testclient import TestClient

from reverie.jobs.heartbeat import WORKERS, Heartbeat, alive_workers
from reverie.server.app import create_app
from reverie.server.config import ServerConfig
from servers import wait_for


def metric(text: str, line: str) -> float | None:
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line + " ")), None)


def test_a_heartbeat_keeps_a_workers_counts_and_goes_when_it_stops(redis_url):
    client = redis_client.Redis.from_url(redis_url)
    beat = Heartbeat(client, "host-1", "cpu", every_s=0.2).start()
    beat.busy(True)
    [worker] = alive_workers(client)
    assert (worker.name, worker.device, worker.busy, worker.pictures) == ("host-1", "cpu", 1, 0)
    beat.busy(False)
    beat.ended("done", 4)
    beat.ended("failed", 0)
    beat.ended("cancelled", 1)
    beat.ended("requeued", 2)  # stopped with its worker: no ending, its pictures made all the same
    [worker] = alive_workers(client)
    assert (worker.done, worker.failed, worker.cancelled, worker.pictures, worker.busy) == (1, 1, 1, 7, 0)
    assert 0 < client.ttl(WORKERS + "host-1") <= 1
    client.delete(WORKERS + "host-1")
    assert [w.pictures for w in wait_for(lambda: alive_workers(client), "the worker beats again", patience=5)] == [7]  # back, whole, at the next beat
    beat.stop()
    assert alive_workers(client) == []


def test_a_worker_that_stops_beating_expires(redis_url):
    client = redis_client.Redis.from_url(redis_url)
    dead = Heartbeat(client, "host-dead", every_s=0.3).start()
    dead._stopped.set()  # its process is gone: no more beats, nobody removes its hash
    dead._thread.join()
    assert [worker.name for worker in alive_workers(client)] == ["host-dead"]
    wait_for(lambda: alive_workers(client) == [], "the silent worker expires", patience=10)


def test_a_front_end_on_celery_reports_each_worker_with_a_label(redis_url, tmp_path):
    client = redis_client.Redis.from_url(redis_url)
    busy = Heartbeat(client, "gpu-box-11", "cuda:0").start()
    idle = Heartbeat(client, "gpu-box-12", "cuda:1").start()
    busy.busy(True)
    busy.ended("done", 3)
    idle.ended("done", 2)
    idle.ended("failed", 0)
    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu", broker=redis_url)
    with TestClient(create_app(config)) as front:
        text = front.get("/metrics").text
        assert metric(text, "reverie_workers_alive") == 2 and metric(text, "reverie_broker_up") == 1
        assert metric(text, 'reverie_worker_busy{worker="gpu-box-11"}') == 1
        assert metric(text, 'reverie_worker_busy{worker="gpu-box-12"}') == 0
        assert metric(text, 'reverie_worker_pictures_total{worker="gpu-box-11"}') == 3
        assert metric(text, 'reverie_worker_jobs_total{worker="gpu-box-12",status="failed"}') == 1
        assert "# TYPE reverie_worker_pictures_total counter" in text
        assert metric(text, "reverie_worker_busy") is None  # no worker of its own
        idle.stop()
        text = front.get("/metrics").text
        assert metric(text, "reverie_workers_alive") == 1 and 'worker="gpu-box-12"' not in text
        busy.stop()
        assert metric(front.get("/metrics").text, "reverie_workers_alive") == 0

