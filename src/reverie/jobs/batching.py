"""Dynamic batching: a worker that takes a job also takes the queued jobs that can share its
forward passes (the same model, size, sampler, steps and settings: `run.sharing`), up to a
limit of pictures per pass, and runs them together (`run.run_jobs`); concurrent users then
share the UNet's passes, and each job still gets exactly its own seeds' pictures.

The gallery's database decides who runs what: a companion is claimed only while it is still
queued (`Gallery.claim_queued`, one UPDATE), so it is never run twice; the distributed engine
first takes its lease too, as for the job its message brought. Jobs that cannot share (a
resumed job, best-of, an image mode, a video) run alone, as before.
"""

from __future__ import annotations

from collections.abc import Callable

DEFAULT_LIMIT = 8  # pictures per shared pass (`--batch-limit`); 1 turns batching off
LOOK_AHEAD = 64  # queued jobs looked at for companions


def companions(gallery, studio, job, limit: int, take: Callable) -> tuple[list, object]:
    """Queued jobs that can share `job`'s passes, oldest first, taken with `take(job_id)` (which
    returns the claimed job, or None when another worker got it first), while their batches fit
    in `limit` pictures beside `job`'s. Returns (them, the key), ([], None) when `job` runs alone."""
    from .run import sharing

    mine = sharing(gallery, studio, job) if limit > 1 else None
    if mine is None:
        return [], None
    key, size = mine
    room = limit - size
    taken = []
    for candidate in gallery.queued_after(job, LOOK_AHEAD):
        if room <= 0:
            break
        theirs = sharing(gallery, studio, candidate)
        if theirs is None or theirs[0] != key or theirs[1] > room:
            continue
        claimed = take(candidate.id)
        if claimed is not None:
            taken.append(claimed)
            room -= theirs[1]
    return taken, key
