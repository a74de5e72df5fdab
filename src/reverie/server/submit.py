"""Turning an API call into a queued job, and a job into what the APIs show.

Every front door (the page, /api/v1, /sdapi/v1, /v1/images) ends here, so validation, styles,
the model whitelist, the queue bound and the credit charge are the same for all of them.
"""

from __future__ import annotations

import json

from ..errors import BadRequest
from ..gallery.models import Job, User
from ..prompts.styles import apply_style
from ..request import make_dream_request, make_request
from .state import StudioState, check_model

SERVER_DREAM_GENERATORS = ("mini", "pixels")
SERVER_DREAM_GUIDES = ("mini",)
SERVER_DREAM_PRIORS = ("auto", "mini", "none")


def _cost(state: StudioState) -> int:
    return state.config.cost_per_request if state.config.multi_user else 0


def submit_generation(state: StudioState, user: User, fields: dict, style: str | None = None) -> Job:
    """Validate `fields` as a GenerationRequest (plus a style preset) and queue it."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if style:
        fields["prompt"], fields["negative_prompt"] = apply_style(style, fields.get("prompt", ""), fields.get("negative_prompt", ""))
    fields["model"] = check_model(state, fields.get("model"))
    fields.setdefault("device", state.config.device)
    request = make_request(**fields)
    if request.n_samples * request.n_iter > state.config.max_images_per_request:
        raise BadRequest("n_samples", f"at most {state.config.max_images_per_request} pictures per request")
    if request.n_samples * request.n_iter * request.rerank > state.config.max_images_per_request * 4:
        raise BadRequest("rerank", f"at most {state.config.max_images_per_request * 4} candidates per request (n_samples x n_iter x rerank)")
    data = request.settings()
    job = state.gallery.add_job(user.id, "generate", data, state.config.queue_capacity, _cost(state), state.config.monthly_credits)
    state.runner.wake()
    return job


def submit_dream(state: StudioState, user: User, fields: dict) -> Job:
    fields = {k: v for k, v in fields.items() if v is not None}
    if fields.get("generator", "mini") not in SERVER_DREAM_GENERATORS:
        raise BadRequest("generator", f"the studio dreams with {' or '.join(SERVER_DREAM_GENERATORS)}; use `reverie dream` for checkpoint files")
    if any(guide not in SERVER_DREAM_GUIDES for guide in fields.get("guides", ["mini"])):
        raise BadRequest("guides", "the studio dreams with the built-in guide (mini)")
    if fields.get("prior", "auto") not in SERVER_DREAM_PRIORS:
        raise BadRequest("prior", f"the studio's dream prior is one of {', '.join(SERVER_DREAM_PRIORS)}; use `reverie dream` for model files")
    fields.setdefault("device", state.config.device)
    request = make_dream_request(**fields)
    if request.iterations > 5000:
        raise BadRequest("iterations", "at most 5000 iterations per dream in the studio")
    data = request.settings()
    job = state.gallery.add_job(user.id, "dream", data, state.config.queue_capacity, _cost(state), state.config.monthly_credits)
    state.runner.wake()
    return job


def job_view(state: StudioState, job: Job) -> dict:
    """A job as the native API and the page see it."""
    live = state.runner.live.get(job.id)
    images = state.gallery.job_images(job)
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created": job.created.isoformat() + "Z",
        "position": state.gallery.queue_position(job),
        "error": job.error,
        "request": json.loads(job.request_json),
        "progress": {
            "stage": live.stage if live else job.status,
            "step": live.step if live else 0,
            "total": live.total if live else 0,
            "fraction": 1.0 if job.status == "done" else (live.fraction if live else 0.0),
            "images_done": live.images_done if live else len(images),
            "images_total": live.images_total if live else 0,
            "message": live.message if live else "",
            "preview_version": live.version if live and live.preview else None,
        },
        "images": [image_view(state, image) for image in images],
    }


def image_view(state: StudioState, image) -> dict:
    settings = json.loads(image.settings_json)
    return {
        "id": image.id,
        "job_id": image.job_id,
        "url": state.file_url(image.id),
        "prompt": image.prompt,
        "seed": image.seed,
        "width": image.width,
        "height": image.height,
        "created": image.created.isoformat() + "Z",
        "settings": settings.get("settings", settings),
        "score": settings.get("clip_score"),  # the built-in CLIP's cosine to the prompt, when scored
    }
