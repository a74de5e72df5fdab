"""AUTOMATIC1111-compatible endpoints, /sdapi/v1: the fields A1111 clients send and read.

txt2img and img2img wait for their job (queued like any other) and answer with base64 PNGs,
`parameters` (the request as understood) and `info` (a JSON string with seeds and infotexts).
They wait without holding a thread (`JobQueue.finished`, jobs/); their short blocking steps (checking
pictures, the database, reading the files) run in the thread pool.
"""

from __future__ import annotations

import base64
import json
import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import BadRequest
from ..gallery.models import User
from ..outputs.metadata import read_png_info
from .inputs import MAX_PROMPT_CHARS, StrictJSONRoute, client_names
from .state import StudioState, check_mask_size, checked_picture, current_user, decode_base64_image, get_state, save_picture
from .submit import submit_job

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"], route_class=StrictJSONRoute)

# A1111's field -> the reverie request field it becomes. `_fields` builds requests by it, and
# errors about a request field name the A1111 field the client sent (CLIENT_NAMES, its inverse).
FIELDS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "sampler_name": "sampler",
    "batch_size": "n_samples", "n_iter": "n_iter", "steps": "steps", "cfg_scale": "cfg_scale", "width": "width",
    "height": "height", "sd_model_checkpoint": "model", "styles": "styles", "init_images": "init_image",
    "denoising_strength": "strength", "mask": "mask_image", "mask_blur": "mask_blur",
    "inpainting_mask_invert": "mask_mode",
    "tiling": "tile",
}
CLIENT_NAMES = {ours: theirs for theirs, ours in FIELDS.items()}


class A1111Common(BaseModel):
    # A1111 clients send many fields reverie has no use for (restore_faces, ...): accepted, ignored.
    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients put the sampler here
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    override_settings: dict = Field(default_factory=dict)
    send_images: bool = True
    tiling: bool = False  # seamless tiles (reverie's `tile`, as `--tile` after the prompt)


class Txt2ImgBody(A1111Common):
    pass


class Img2ImgBody(A1111Common):
    init_images: list[str] = Field(default_factory=list)
    denoising_strength: float = 0.75
    mask: str | None = None
    mask_blur: int = 4
    inpainting_mask_invert: int = 0


def _fields(body: A1111Common, state: StudioState, user: User, **sent) -> dict:
    """The reverie request for `body` (and the image fields in `sent`), by FIELDS."""
    model = body.override_settings.get("sd_model_checkpoint") or state.options.get(user.id, {}).get("sd_model_checkpoint")
    sent = {name: getattr(body, name) for name in ("prompt", "negative_prompt", "styles", "seed", "batch_size", "n_iter",
                                                 "steps", "cfg_scale", "width", "height", "tiling")} | {
        "sampler_name": body.sampler_name or body.sampler_index, "sd_model_checkpoint": model} | sent
    return {FIELDS[name]: value for name, value in sent.items()} | {"upscale": 1}


async def _submit(state: StudioState, user: User, fields: dict):
    job = await run_in_threadpool(submit_job, state, user, fields)
    job = await state.runner.finished(job.id, state.config.sync_timeout_s)
    if job.status == "failed":
        raise BadRequest("request", job.error or "the generation failed")
    return job


def _response(state: StudioState, job, body: A1111Common) -> dict:
    images = state.gallery.job_images(job)
    paths = [state.gallery.image_path(image) for image in images]
    infos = [read_png_info(path) for path in paths]
    infotexts = [info.get("parameters") or "" for info in infos]
    request = json.loads(job.request_json)
    # The settings the pictures were made with: what the request left out, the model filled in.
    made_with = ((infos[0].get("reverie") or {}).get("settings") or {}) if infos else {}
    used = request | made_with
    # Each picture's own prompt (its template's variant, styled), as A1111 reports them.
    prompts = [(info.get("reverie") or {}).get("prompt") or request for info in infos]
    info = {
        "prompt": request["prompt"], "all_prompts": [prompt["prompt"] for prompt in prompts],
        "negative_prompt": request["negative_prompt"], "all_negative_prompts": [prompt["negative_prompt"] for prompt in prompts],
        "seed": images[0].seed if images else request.get("seed"), "all_seeds": [image.seed for image in images],
        "subseed": -1, "all_subseeds": [-1] * len(images), "subseed_strength": 0,
        "width": images[0].width if images else request["width"], "height": images[0].height if images else request["height"],
        "sampler_name": used["sampler"], "cfg_scale": used["cfg_scale"], "steps": used["steps"],
        "batch_size": request["n_samples"], "sd_model_name": request.get("model"), "job_timestamp": job.created.strftime("%Y%m%d%H%M%S"),
        "infotexts": infotexts, "styles": body.styles, "reverie_job": job.id,
    }
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in paths] if body.send_images else []
    return {"images": encoded, "parameters": body.model_dump(), "info": json.dumps(info)}


@router.post("/txt2img")
async def txt2img(body: Txt2ImgBody, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    with client_names(CLIENT_NAMES):
        job = await _submit(state, user, _fields(body, state, user) | {"mode": "txt2img"})
    return await run_in_threadpool(_response, state, job, body)


def _picture(state: StudioState, value: str, field: str):
    return checked_picture(state, decode_base64_image(value, field, state.config.max_upload_bytes), field)


@router.post("/img2img")
async def img2img(body: Img2ImgBody, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    if not body.init_images:
        raise BadRequest("init_images", "give one base64 picture to start from")
    sent = await run_in_threadpool(_stored_pictures, state, body)
    fields = _fields(body, state, user, **sent) | {"mode": "inpaint" if "mask" in sent else "img2img"}
    with client_names(CLIENT_NAMES):
        job = await _submit(state, user, fields)
    return await run_in_threadpool(_response, state, job, body)


def _stored_pictures(state: StudioState, body: Img2ImgBody) -> dict:
    """The A1111 image fields of `body`, its pictures checked (both before either is stored) and stored."""
    init = _picture(state, body.init_images[0], "init_images")
    mask = _picture(state, body.mask, "mask") if body.mask else None
    if mask is not None:
        check_mask_size(init.size, mask.size, "init_images", "mask")
    sent = {"init_images": str(save_picture(state, init, "RGB")), "denoising_strength": body.denoising_strength}
    if mask is not None:
        sent |= {"mask": str(save_picture(state, mask, "L")), "mask_blur": body.mask_blur,
                 "inpainting_mask_invert": "black" if body.inpainting_mask_invert else "white"}
    return sent


@router.get("/progress")
def progress(skip_current_image: bool = False, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    running = [job for job in state.gallery.jobs(user.id, 20) if job.status in ("queued", "running")]
    current = next((job for job in running if job.status == "running"), None)
    live = state.runner.live.get(current.id) if current else None
    fraction = live.fraction if live else 0.0
    elapsed = time.monotonic() - live.started if live else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    image = None
    if live and live.preview and not skip_current_image:
        image = base64.b64encode(live.preview).decode()
    return {
        "progress": fraction, "eta_relative": eta,
        "state": {"skipped": False, "interrupted": False, "job": current.id if current else "", "job_count": len(running),
                  "job_timestamp": current.created.strftime("%Y%m%d%H%M%S") if current else "0", "job_no": 0,
                  "sampling_step": live.step if live else 0, "sampling_steps": live.total if live else 0},
        "current_image": image, "textinfo": live.message if live else None,
    }


@router.post("/interrupt")
def interrupt(state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    for job in state.gallery.jobs(user.id, 20):
        if job.status == "running":
            state.runner.cancel(job.id)
    return {}


@router.get("/sd-models")
def sd_models():
    from ..models.registry import list_models

    return [{"title": e.name, "model_name": e.name, "hash": None, "sha256": None, "filename": e.name, "config": None}
            for e in list_models()]


@router.get("/loras")
def loras(state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    """A1111's LoRA list (its built-in Lora extension's route): the names `<lora:NAME:W>` takes,
    the caller's own and the shared ones (server/networks.py). Files are named, never their place
    on the server."""
    from ..models.lora import lora_info
    from .networks import lora_files

    rows = []
    for name, path in lora_files(state, user).items():
        try:
            info = lora_info(path)
            metadata = {"base": info.base, "format": info.format, "hash": info.hash}
        except Exception:  # an unreadable file is listed (the user sees it) but says so
            metadata = {"error": "unreadable"}
        rows.append({"name": name, "alias": name, "path": path.name, "metadata": metadata})
    return rows


@router.get("/embeddings")
def embeddings():
    """A1111's embedding list: `loaded` by name with their width and vector count."""
    from ..models.embeddings import list_embeddings, read_embedding

    loaded, skipped = {}, {}
    for name, path in list_embeddings().items():
        try:
            embedding = read_embedding(path)
        except Exception:
            skipped[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
            continue
        loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                        "shape": embedding.width, "vectors": int(embedding.first.shape[0])}
    return {"loaded": loaded, "skipped": skipped}


@router.get("/samplers")
def samplers():
    from ..samplers import SAMPLERS

    return [{"name": s.label, "aliases": [s.name, *s.aliases], "options": {}} for s in SAMPLERS]


@router.get("/prompt-styles")
def prompt_styles():
    from ..prompts.styles import load_styles

    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative} for s in load_styles()]


@router.get("/options")
def get_options(state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    from ..models.registry import default_model

    chosen = state.options.get(user.id, {}).get("sd_model_checkpoint") or state.config.default_model or default_model()
    return {"sd_model_checkpoint": chosen, "samples_format": "png", "CLIP_stop_at_last_layers": 1}


@router.post("/options")
def set_options(body: dict, state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    from .state import check_model

    if "sd_model_checkpoint" in body:
        state.options.setdefault(user.id, {})["sd_model_checkpoint"] = check_model(state, body["sd_model_checkpoint"])
    return None
