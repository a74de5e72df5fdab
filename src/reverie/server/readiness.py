"""`GET /readyz`: whether this front end can take a request now, for a load balancer's readiness check.

It asks what a request needs: the gallery's database answers `SELECT 1`; the shared picture
folder takes a file (written and deleted: a read-only or vanished mount fails); and, on Celery,
the broker (Redis) answers a PING on a connection of its own. Each has READY_TIMEOUT_S to answer
(an unreachable database host does not hold the check). 200 with each part "ok", or 503 naming
the parts that are "unavailable". The reasons go to the server's log, never to the caller: they
name hosts and ports. `/healthz` stays the liveness check (the process serves at all).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from .state import StudioState, get_state

router = APIRouter()
log = logging.getLogger("reverie.readiness")
READY_TIMEOUT_S = 3.0


def _database(state: StudioState) -> None:
    with state.gallery.session() as db:
        db.execute(text("SELECT 1"))


def _storage(state: StudioState) -> None:
    probe = state.gallery.images_dir / f".ready-{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    probe.unlink()


def _broker(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_timeout=READY_TIMEOUT_S, socket_connect_timeout=READY_TIMEOUT_S).ping()


async def _answers(name: str, check, secret: str | None) -> bool:
    try:
        await asyncio.wait_for(run_in_threadpool(check), READY_TIMEOUT_S)
        return True
    except asyncio.TimeoutError:
        log.warning("readiness: the %s did not answer in %g s", name, READY_TIMEOUT_S)
    except Exception as exc:  # whatever the part raises, it is not ready; the reason is logged
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        log.warning("readiness: the %s is unavailable (%s)", name, reason.replace(secret, "***") if secret else reason)
    return False


@router.get("/readyz", include_in_schema=False)
async def ready(state: StudioState = Depends(get_state)) -> JSONResponse:
    checks = {"database": (lambda: _database(state), state.gallery.engine.url.password),
              "storage": (lambda: _storage(state), None)}
    if state.config.broker:
        checks["broker"] = (lambda: _broker(state.config.broker), urlsplit(state.config.broker).password)
    answers = await asyncio.gather(*(_answers(name, check, secret) for name, (check, secret) in checks.items()))
    parts = {name: "ok" if answered else "unavailable" for name, answered in zip(checks, answers)}
    ready_now = all(answers)
    return JSONResponse({"status": "ok" if ready_now else "unavailable", **parts}, status_code=200 if ready_now else 503)
