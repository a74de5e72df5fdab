"""Uploaded pictures (init images, masks) and videos live only as long as the job that reads them.

An upload is a file under `<gallery>/uploads/` named by the server; a job's request names it by
its path. When the job ends (done, failed, cancelled) its uploads are deleted; a refused request
deletes the ones it stored; and at server start, uploads older than a day that no queued or
running job names (left by a crash) are swept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

STALE_AFTER_S = 24 * 3600
# the request fields the server fills with uploads (a LoRA's training `pictures`, a restyle's video too)
IMAGE_FIELDS = ("init_image", "mask_image", "content_image", "style_images", "pictures", "video_input")


def upload_paths(uploads_dir: Path, request: dict) -> set[Path]:
    """The paths inside `uploads_dir` that `request`'s picture fields name. Only those fields
    (which the server fills, never the client) are read: a prompt that happens to hold an
    upload's path deletes nothing."""
    found = set()
    for key in IMAGE_FIELDS:
        value = request.get(key) if isinstance(request, dict) else None
        for item in value if isinstance(value, list) else [value]:  # style_images and pictures are lists
            if isinstance(item, str) and item:
                try:
                    path = Path(item).resolve()
                except (OSError, ValueError):
                    continue
                if path.parent == Path(uploads_dir).resolve():
                    found.add(path)
    return found


def delete_uploads(uploads_dir: Path, request) -> None:
    """Delete the uploads `request` (a dict, or its JSON) names in its picture fields; nothing
    outside `uploads_dir`."""
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except ValueError:
            return
    for path in upload_paths(Path(uploads_dir), request):
        path.unlink(missing_ok=True)


def sweep_uploads(uploads_dir: Path, active_requests: list[str], max_age_s: float = STALE_AFTER_S,
                  now: float | None = None) -> list[Path]:
    """Delete uploads older than `max_age_s` that none of `active_requests` (the JSON requests
    of queued and running jobs) names; returns what was deleted."""
    uploads_dir = Path(uploads_dir)
    now = time.time() if now is None else now
    kept: set[Path] = set()
    for request in active_requests:
        try:
            kept |= upload_paths(uploads_dir, json.loads(request))
        except ValueError:
            continue
    swept = []
    for path in uploads_dir.iterdir():
        try:
            if path.is_file() and path.resolve() not in kept and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                swept.append(path)
        except FileNotFoundError:  # gone already
            continue
    return swept
