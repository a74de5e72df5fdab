"""OpenAI-compatible image endpoints, /v1/images: generations, edits, variations.

`size` is the size of the pictures returned; a model that draws small and upscales (reverie-mini
draws 128 px) is asked for its own size and the upscaler makes the rest. Edits and variations
send the picture at `size`, and the method works at the model's size and brings the result back.
Edits follow DALL-E 2: the transparent pixels of the mask (or of the image, without a mask) are
repainted.
`url` responses are signed links that work without an API key.
Every route here waits for its job without holding a thread (`JobQueue.finished`, jobs/); its short
blocking steps (checking pictures, the database) run in the thread pool.
"""

from __future__ import annotations

import base64
import time
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import BadRequest
from ..gallery.models import User
from .inputs import MAX_PROMPT_CHARS, StrictJSONRoute, client_names
from .state import StudioState, check_mask_size, checked_picture, current_user, get_state, save_picture
from .submit import submit_job

router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=StrictJSONRoute)
SIZES = ("64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024")
# OpenAI's field -> the reverie request fields it becomes. `_fields` builds requests by it, and
# errors about a request field name the OpenAI field the client sent (CLIENT_NAMES, its inverse).
FIELDS = {"prompt": ("prompt",), "n": ("n_samples",), "image": ("init_image",), "mask": ("mask_image",),
          "model": ("model",), "size": ("width", "height", "upscale")}
CLIENT_NAMES = {ours: theirs for theirs, fields in FIELDS.items() for ours in fields}


class GenerationsBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # quality, style, user: accepted

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1, le=10)
    size: str = "256x256"
    response_format: Literal["url", "b64_json"] = "url"
    model: str | None = None


def _model_name(model: str | None) -> str | None:
    # "dall-e-2" and the like mean "the studio's default model".
    return None if model is None or model.startswith(("dall-e", "gpt-image")) else model


def _side(size: str) -> int:
    if size not in SIZES:
        raise BadRequest("size", f"must be one of {', '.join(SIZES)}")
    return int(size.split("x")[0])


def _base_size(state: StudioState, size: str, model: str | None) -> tuple[int, int, int]:
    """(width, height, upscale) that make pictures of `size`."""
    side = _side(size)
    from ..models.registry import default_model, native_side
    from .state import check_model

    # A model with a native size (reverie-mini's 128) draws at it and the upscaler makes the rest.
    native = native_side(check_model(state, model) or default_model())
    upscale = max((f for f in (1, 2, 4) if native and side // f >= native), default=1)
    return side // upscale, side // upscale, upscale


def _respond(state: StudioState, request: Request, job, response_format: str) -> dict:
    images = state.gallery.job_images(job)
    data = []
    for image in images:
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(state.gallery.image_path(image).read_bytes()).decode(),
                         "revised_prompt": image.prompt})
        else:
            data.append({"url": str(request.base_url).rstrip("/") + state.file_url(image.id), "revised_prompt": image.prompt})
    return {"created": int(time.time()), "data": data}


def _fields(mode: str, **sent) -> dict:
    """The reverie request for what an OpenAI client sent (`size` as (width, height, upscale)), by FIELDS."""
    fields = {"mode": mode}
    for name, value in sent.items():
        values = value if name == "size" else (value,)
        fields |= dict(zip(FIELDS[name], values))
    return fields


async def _run(state: StudioState, user: User, fields: dict):
    job = await run_in_threadpool(submit_job, state, user, fields)
    job = await state.runner.finished(job.id, state.config.sync_timeout_s)
    if job.status != "done":
        raise BadRequest("prompt", job.error or f"the request ended {job.status}")
    return job


@router.post("/generations")
async def generations(body: GenerationsBody, request: Request, state: StudioState = Depends(get_state),
                      user: User = Depends(current_user)):
    model = _model_name(body.model)
    with client_names(CLIENT_NAMES):
        size = await run_in_threadpool(_base_size, state, body.size, model)
        job = await _run(state, user, _fields("txt2img", prompt=body.prompt, n=body.n, size=size, model=model))
    return await run_in_threadpool(_respond, state, request, job, body.response_format)


async def _read(upload: UploadFile, limit: int) -> bytes:
    return await upload.read(limit + 1)  # one byte over the limit is enough to refuse it


@router.post("/edits")
async def edits(request: Request, image: UploadFile = File(...), prompt: str = Form(..., min_length=1, max_length=MAX_PROMPT_CHARS),
                mask: UploadFile | None = File(None), n: int = Form(1, ge=1, le=10), size: str = Form("256x256"),
                response_format: Literal["url", "b64_json"] = Form("url"), model: str | None = Form(None),
                state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    limit = state.config.max_upload_bytes
    side = _side(size)
    image_bytes = await _read(image, limit)
    mask_bytes = await _read(mask, limit) if mask else None
    init, mask_path = await run_in_threadpool(_stored_pictures, state, image_bytes, mask_bytes, side)
    with client_names(CLIENT_NAMES):
        job = await _run(state, user, _fields("inpaint", prompt=prompt, image=str(init), mask=str(mask_path), n=n,
                                              model=_model_name(model)) | {"mask_mode": "transparent"})
    return await run_in_threadpool(_respond, state, request, job, response_format)


def _stored_pictures(state: StudioState, image_bytes: bytes, mask_bytes: bytes | None, side: int):
    """(image, mask) paths at `side`; both pictures are checked (from their headers first) before
    either is stored. Without a mask, the image's own transparency is the mask."""
    picture = checked_picture(state, image_bytes, "image")
    mask_picture = checked_picture(state, mask_bytes, "mask") if mask_bytes is not None else None
    if mask_picture is not None:
        check_mask_size(picture.size, mask_picture.size, "image", "mask")
    init = save_picture(state, picture, size=(side, side))
    return init, save_picture(state, mask_picture, size=(side, side)) if mask_picture is not None else init


@router.post("/variations")
async def variations(request: Request, image: UploadFile = File(...), n: int = Form(1, ge=1, le=10),
                     size: str = Form("256x256"), response_format: Literal["url", "b64_json"] = Form("url"),
                     model: str | None = Form(None), state: StudioState = Depends(get_state),
                     user: User = Depends(current_user)):
    side = _side(size)
    data = await _read(image, state.config.max_upload_bytes)
    init = await run_in_threadpool(lambda: save_picture(state, checked_picture(state, data, "image"), "RGB", (side, side)))
    with client_names(CLIENT_NAMES):
        job = await _run(state, user, _fields("variations", prompt="", image=str(init), n=n, model=_model_name(model)))
    return await run_in_threadpool(_respond, state, request, job, response_format)
