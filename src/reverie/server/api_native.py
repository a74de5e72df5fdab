"""The native API, /api/v1: jobs (submit, follow, cancel), the gallery, models, samplers, styles,
LoRAs and embeddings, login.

LoRAs and embeddings have routes of their own (`GET /api/v1/loras`, `GET /api/v1/embeddings`)
rather than kinds in `/api/v1/models`: the LoRA list is per user (their own trained ones and the
shared ones, server/networks.py), while the models are the same for everyone."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..gallery.models import User
from .inputs import MAX_PROMPT_CHARS, StrictJSONRoute
from ..jobs.live import ServerStopping
from .state import (SESSION_COOKIE, StudioState, Unauthorized, current_user, get_state, password_user,
                    refused_uploads_deleted, resolve_image, resolve_video)
from .submit import image_view, job_view, submit_action, submit_again, submit_job

router = APIRouter(prefix="/api/v1", tags=["native"], route_class=StrictJSONRoute)


class GenerateBody(BaseModel):
    """A job for any mode a method serves (`GET /api/v1/modes`). Images are `image:ID` (from your
    gallery) or base64 data. Fields a mode does not take are refused by name."""

    model_config = ConfigDict(extra="forbid")

    mode: str = "txt2img"
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    styles: list[str] | None = Field(None, max_length=8)  # style presets, applied in order
    stylize: int | None = None
    combinatorial: bool | None = None  # one picture per combination of the prompt template
    max_combinations: int | None = None
    strict_combinations: bool | None = None
    expand: bool | None = None  # prompt expansion, drawn from each picture's seed
    tile: bool | None = None  # seamless tiles
    chaos: int | None = None  # how different the pictures are, 0..100
    aspect_ratio: str | None = None  # "W:H", about the model's native area
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    seed: int | None = None
    n_samples: int | None = None
    strength: float | str | None = None  # a video's (animate) is a keyframe schedule, "0:(0.35)"
    init_image: str | None = None
    mask_image: str | None = None
    mask_mode: str | None = None
    mask_blur: int | None = None
    outpaint_left: int | None = None
    outpaint_right: int | None = None
    outpaint_up: int | None = None
    outpaint_down: int | None = None
    upscale: Literal[1, 2, 4] | None = None
    # speed (diffusion): what runs the UNet, int8, step caching, the tiny decoder
    runtime: str | None = None
    quantize: str | None = None
    step_cache: int | None = None
    decoder: str | None = None
    rerank: int | None = None
    score: bool | None = None
    # mode "style": pictures as `image:ID` or base64, like init_image; a style network by the name
    # /api/v1/models lists (kind "style"); built-in feature networks only.
    content_image: str | None = None
    style_images: list[str] | None = Field(None, max_length=4)
    style_weights: list[float] | None = Field(None, max_length=4)
    network: str | None = None
    features: str | None = None
    size: int | None = None
    optimizer: str | None = None
    init: str | None = None
    smoothness: float | None = None
    preserve_colour: bool | None = None
    save_every: int | None = None
    # mode "gan": a GAN /api/v1/models lists (kind "gan"), one of its classes, truncation
    class_name: str | None = Field(None, max_length=100)
    truncation: float | None = None
    # mode "grid": the fields of the request every cell starts from (txt2img: the studio's grids
    # start from a prompt) and up to three axes, each "NAME=V1,V2,..." or {"name": ..., "values": [...]}
    base: dict | None = None
    x: str | dict | None = None
    y: str | dict | None = None
    z: str | dict | None = None
    # mode "video" (see VideoRequest): motion walk | animate | restyle | dream; `prompts` the walk's
    # stops or a timeline ("0: a forest | 48: a city"); camera moves and strength as keyframe
    # schedules; `dream` a dream video's own dream settings (built-in generator, guides and prior
    # only); `video_input` the video a restyle paints again, `image:ID` of a video in your gallery.
    motion: str | None = None
    prompts: list[str] | None = Field(None, max_length=64)
    frames: int | None = None
    fps: float | None = None
    formats: list[str] | None = Field(None, max_length=3)
    interpolate: int | None = None
    interpolation: str | None = None
    keep_frames: bool | None = None
    seeds: list[int] | None = Field(None, max_length=64)
    loop: bool | None = None
    zoom: str | float | None = None
    angle: str | float | None = None
    translation_x: str | float | None = None
    translation_y: str | float | None = None
    border: str | None = None
    cfg: str | float | None = None
    noise: str | float | None = None
    seed_behavior: str | None = None
    colour_coherence: str | None = None
    cadence: int | None = None
    prompt_blend: bool | None = None
    iterations_per_frame: int | None = None
    first_iterations: int | None = None
    dream: dict | None = None
    video_input: str | None = None
    extract_every: int | None = None
    coherence: str | float | None = None
    flow: str | None = None
    sound: bool | None = None
    # mode "train_lora": 10 to 50 pictures of the concept (`image:ID` or base64), the base model
    # (`model`, from /api/v1/models), the trigger word, the LoRA's name (default: from the
    # trigger), `steps`, the rank and how often a grid of samples is made (server/submit.py caps).
    pictures: list[str] | None = Field(None, max_length=50)
    trigger: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=64)
    rank: int | None = None
    sample_every: int | None = None


class DreamBody(BaseModel):
    """A dream job: the built-in generator, guide and prior (files are for the `reverie` command)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS)
    generator: str | None = None
    width: int | None = None
    height: int | None = None
    upscale: int | None = None
    iterations: int | None = None
    save_every: int | None = None
    patience: int | None = None
    lr: float | None = None
    cutouts: int | None = None
    prior: str | None = None
    prior_weight: float | None = None
    smoothness: float | None = None
    seed: int | None = None
    init_image: str | None = None


class LoginBody(BaseModel):
    username: str = Field(..., max_length=64)
    password: str = Field(..., max_length=1024)


@router.post("/jobs", status_code=202, summary="Queue a job for any mode (txt2img, img2img, variations, inpaint, outpaint, upscale, ...)")
def create_job(body: GenerateBody, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    fields, stored = body.model_dump(), {}
    with refused_uploads_deleted(state, stored):  # the init image, when the mask is refused
        for name in ("init_image", "mask_image", "content_image"):
            stored[name] = resolve_image(state, user, fields[name], name)
        for name in ("style_images", "pictures"):
            if fields[name] is not None:
                stored[name] = []  # filled as they are stored: a refusal halfway deletes those stored
                for value in fields[name]:
                    stored[name].append(resolve_image(state, user, value, name))
    stored["video_input"] = resolve_video(state, user, fields["video_input"], "video_input")
    return job_view(state, submit_job(state, user, fields | stored))


@router.post("/dreams", status_code=202, summary="Queue a dream (CLIP-steered, built-in generator and guide)")
def create_dream(body: DreamBody, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    fields = body.model_dump() | {"mode": "dream"}
    fields["init_image"] = resolve_image(state, user, fields["init_image"], "init_image")
    fields["save_every"] = fields["save_every"] or 10
    return job_view(state, submit_job(state, user, fields))


@router.get("/jobs", summary="Your recent jobs")
def list_jobs(limit: int = Query(50, ge=1, le=500), state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    return [job_view(state, job) for job in state.gallery.jobs(user.id, limit)]


@router.get("/jobs/{job_id}", summary="A job: status, progress, pictures")
def get_job(job_id: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    return job_view(state, state.gallery.job(job_id, user.id))


@router.delete("/jobs/{job_id}", summary="Cancel a queued or running job (finished pictures stay)")
def cancel_job(job_id: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    state.gallery.job(job_id, user.id)
    state.runner.cancel(job_id)
    return job_view(state, state.gallery.job(job_id, user.id))


@router.get("/jobs/{job_id}/preview.png", summary="The live preview of a running job")
def job_preview(job_id: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    state.gallery.job(job_id, user.id)
    live = state.runner.live.get(job_id)
    if live is None or live.preview is None:
        return Response(status_code=204)
    return Response(live.preview, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/events", summary="Server-sent events: the job's progress until it ends")
async def job_events(job_id: str, request: Request, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    await run_in_threadpool(state.gallery.job, job_id, user.id)

    async def stream():
        version = -1
        while True:
            view = await run_in_threadpool(lambda: job_view(state, state.gallery.job(job_id)))
            yield f"event: progress\ndata: {json.dumps(view)}\n\n"
            if view["status"] not in ("queued", "running") or await request.is_disconnected():
                return
            try:
                live = await state.runner.changed(job_id, version, 1.0)
            except ServerStopping:
                return  # the job resumes at the next start; the page follows it again then
            version = live.version if live else version

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/gallery", summary="Your pictures, newest first; q searches the prompts")
def gallery(q: str = Query("", max_length=200), limit: int = Query(60, ge=1, le=500), offset: int = Query(0, ge=0),
            state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    return [image_view(state, image) for image in state.gallery.images(user.id, q, limit, offset)]


@router.get("/images/{image_id}", summary="One picture with its full settings")
def get_image(image_id: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    return image_view(state, state.gallery.image(image_id, user.id))


@router.post("/images/{image_id}/again", status_code=202, summary="Make a picture again, bit for bit: its settings and seed")
def make_again(image_id: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    return job_view(state, submit_again(state, user, state.gallery.image(image_id, user.id)))


@router.post("/images/{image_id}/actions/{action}", status_code=202,
             summary="Midjourney's actions on a picture: upscale, vary, zoom out, pan, reroll (GET /api/v1/actions)")
def picture_action(image_id: str, action: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    from ..actions import action_named

    action_named(action)  # an unknown action is refused before the picture is looked up
    return job_view(state, submit_action(state, user, state.gallery.image(image_id, user.id), action))


@router.get("/actions", summary="The actions on a picture: name, button label, what the request is")
def list_actions():
    from ..actions import ACTIONS

    return [{"name": a.name, "label": a.label, "title": a.title, "description": a.description, "mode": a.mode} for a in ACTIONS.values()]


@router.delete("/images/{image_id}", status_code=204, summary="Delete a picture: its row and its file")
def delete_image(image_id: str, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    state.gallery.delete_image(image_id, user.id)
    return Response(status_code=204)


@router.get("/models", summary="Models this studio can use")
def models():
    from ..models.registry import list_models

    from ..models.style_network import list_style_networks

    # LoRAs and embeddings have their own lists (/api/v1/loras, /api/v1/embeddings): they go in prompts
    return [{"name": e.name, "kind": e.kind, "note": e.note} for e in [*list_models(), *list_style_networks()]
            if e.kind not in ("lora", "embedding")]


@router.get("/loras", summary="The LoRAs you may use: your own (trained here) and the studio's; write <lora:NAME:W>")
def loras(state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    from .networks import list_user_loras

    return list_user_loras(state, user)


@router.get("/embeddings", summary="The studio's embeddings (textual inversions); write the name in a prompt")
def embeddings(_user: User = Depends(current_user)):
    from .networks import list_shared_embeddings

    return list_shared_embeddings()


@router.get("/modes", summary="The modes a job can ask for, one per way of making pictures")
def list_modes():
    from ..studio import modes

    return modes()


@router.get("/samplers", summary="Sampler names (and their A1111 labels)")
def samplers():
    from ..samplers import SAMPLERS

    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases)} for s in SAMPLERS]


@router.get("/styles", summary="Style presets, each with the URL of its preview picture (made by reverie-mini)")
def styles():
    from ..prompts.styles import PREVIEWS_DIR, load_styles
    from .app import STYLE_PREVIEWS_URL

    def preview(name: str | None) -> str | None:
        return f"{STYLE_PREVIEWS_URL}/{name}" if name and (PREVIEWS_DIR / name).is_file() else None

    return [{"name": s.name, "prompt": s.prompt, "negative": s.negative, "settings": s.settings, "preview": preview(s.preview)}
            for s in load_styles()]


@router.get("/me", summary="Who you are, and your credit balance, this month's free credits included (multi-user mode)")
def me(state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    multi = state.config.multi_user
    return {"name": user.name, "admin": user.is_admin, "multi_user": multi,
            "credits": state.credits.balance(user.id, state.now()) if multi else None,
            "monthly_credits": state.config.monthly_credits if multi else None}


@router.post("/login", summary="Log in to the page (sets a session cookie); wrong passwords are rate-limited")
def login(body: LoginBody, request: Request, response: Response, state: StudioState = Depends(get_state)):
    user = password_user(state, request, body.username, body.password)
    if user is None:
        raise Unauthorized("wrong user name or password")
    token = state.gallery.start_session(user.id, state.session_max_age(), state.now())
    # Lax: the cookie goes with a link followed from elsewhere (a GET), never with another
    # site's POST; cross_site.py refuses those anyway.
    response.set_cookie(SESSION_COOKIE, token, max_age=state.config.session_lifetime_s, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return {"name": user.name}


@router.post("/logout", summary="End the page's session")
def logout(request: Request, response: Response, state: StudioState = Depends(get_state)):
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        state.gallery.logout(token)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax")
    return {"ok": True}
