"""Jobs whose Celery message was lost are sent again (issue 21), on real redis-server and PostgreSQL.

A job queued while no worker runs loses its message when Redis is flushed (FLUSHALL: a restart
without persistence); a front end's sweep (jobs/resend.py) finds it queued in the database and not
in `reverie:sent`, sends its task again, and a worker started then makes each seed once. The sweep
itself, on a real Redis and gallery: which jobs count as lost, and the ended ones dropped from the set.
"""

from __future__ import annotations

import signal
from datetime import timedelta

import redis as redis_client

from reverie.gallery.models import Job, utcnow
from reverie.jobs.resend import LEASES, SENT, Resender, forget_sent, lost_jobs, mark_sent, resend_lost
from servers import redis_server, wait_for
from test_jobs_celery import PATIENCE, TINY, FrontEnd, Worker, files_match_rows, make_shared


def test_a_job_whose_message_redis_lost_is_sent_again_and_made_once(tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("REVERIE_RESEND_S", "1")  # the front end sweeps every second (10 by default)
    with redis_server() as server:
        shared = make_shared(tmp_path, postgres_url, server.url(0))
        broker = redis_client.Redis.from_url(server.url(0))
        first = Worker(shared, "first")
        front = FrontEnd(shared)
        first.process.send_signal(signal.SIGTERM)  # no worker now: the job's message waits in Redis
        assert first.process.wait(PATIENCE) == 0, first.output()[-3000:]

        job = front.post("/api/v1/jobs", {"prompt": "lost and found", "n_samples": 2, "seed": 70, "steps": 2, **TINY})["id"]
        assert broker.llen("reverie") == 1 and broker.sismember(SENT, job)
        assert server.command("FLUSHALL") == b"+OK"  # Redis restarted without its data: the message is gone
        assert broker.llen("reverie") == 0 and front.get(f"/api/v1/jobs/{job}")["status"] == "queued"

        wait_for(lambda: broker.llen("reverie") == 1, "the front end's sweep sent the lost job's task again", patience=60)
        assert broker.sismember(SENT, job)
        Worker(shared, "second")
        view = front.finished(job)
        assert view["status"] == "done" and [image["seed"] for image in view["images"]] == [70, 71]
        rows = shared.rows(f"SELECT seed FROM images WHERE job_id = '{job}' ORDER BY \"index\"")
        assert [seed for (seed,) in rows] == [70, 71]  # each seed once
        assert shared.rows(f"SELECT attempts FROM jobs WHERE id = '{job}'") == [(1,)]
        files_match_rows(shared)
        wait_for(lambda: not broker.sismember(SENT, job), "the ended job left the sent set")
        assert front.output().count("its task is sent again") == 1, front.output()[-3000:]  # once, not every sweep
        front.alive("the front end")


def test_which_jobs_the_sweep_counts_as_lost(tmp_path, postgres_url, redis_url):
    shared = make_shared(tmp_path, postgres_url, redis_url)
    gallery, broker = shared.gallery(), redis_client.Redis.from_url(redis_url)
    try:
        user = gallery.local_user().id
        queue = lambda: gallery.add_job(user, "generate", {"prompt": "x"}, capacity=99).id  # noqa: E731
        sent, unsent, fresh, running_held, running_free, ended = (queue() for _ in range(6))
        with gallery.session.begin() as db:  # all but `fresh` were queued a minute ago
            for job_id in (sent, unsent, running_held, running_free, ended):
                db.get(Job, job_id).created = utcnow() - timedelta(minutes=1)
        for job_id in (running_held, running_free):
            gallery.claim(job_id)
        broker.set(LEASES + running_held, "a worker", ex=60)
        gallery.finish_job(ended, "done")
        mark_sent(broker, sent)
        mark_sent(broker, ended)  # its end was not heard by any front end

        assert sorted(lost_jobs(gallery, broker, min_age_s=30)) == sorted([unsent, running_free])
        assert {member.decode() for member in broker.smembers(SENT)} == {sent}  # the ended one dropped
        assert sorted(lost_jobs(gallery, broker)) == sorted([unsent, running_free, fresh])  # no minimum age

        again = []
        assert sorted(resend_lost(gallery, broker, again.append, min_age_s=30)) == sorted([unsent, running_free])
        assert sorted(again) == sorted([unsent, running_free])
        assert lost_jobs(gallery, broker, min_age_s=30) == []  # sent again: in the set now
        forget_sent(broker, unsent)
        assert lost_jobs(gallery, broker, min_age_s=30) == [unsent]

        # One front end sweeps at a time: another's sweep finds the lock held and does nothing.
        held = broker.lock("reverie:resend-lock", timeout=30)
        assert held.acquire(blocking=False)
        assert Resender(gallery, broker, again.append, every_s=30).sweep() == []
        held.release()
        assert Resender(gallery, broker, again.append, every_s=30).sweep() == [unsent]
    finally:
        gallery.engine.dispose()
