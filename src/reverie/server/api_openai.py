"""OpenAI-compatible image endpoints, /v1/images: generations, edits, variations.

`size` is the size of the pictures returned; a model that draws small and upscales (reverie-mini
draws 128 px) is asked for its own size and the upscaler makes the rest. Edits and variations
send the picture at `size`, and the method works at the model's size and brings the result back.
Edits follow DALL-E 2: the transparent pixels of the mask (or of the image, without a mask) are
repainted.
`url` responses are signed links that work without an API key.
Every route here waits for its job without holding a thread (`JobRunner.finished`); its short
blocking steps (checking pictures, the database) run in the thread pool.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import BadRequest
from ..gallery.models import User
from .state import StudioState, current_user, get_state, store_image_bytes
from .submit import submit_job

router = APIRouter(prefix="/v1/images", tags=["openai"])
SIZES = ("64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024")


class GenerationsBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # quality, style, user: accepted

    prompt: str = Field(..., min_length=1, max_length=4000)
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
    width, height, upscale = await run_in_threadpool(_base_size, state, body.size, model)
    job = await _run(state, user, {"mode": "txt2img", "prompt": body.prompt, "n_samples": body.n, "width": width,
                                   "height": height, "upscale": upscale, "model": model})
    return await run_in_threadpool(_respond, state, request, job, body.response_format)


def _size_of(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            return picture.size
    except (OSError, SyntaxError, ValueError):
        return None  # store_image_bytes says what is wrong with it


async def _read(upload: UploadFile, limit: int) -> bytes:
    return await upload.read(limit + 1)  # one byte over the limit is enough to refuse it


@router.post("/edits")
async def edits(request: Request, image: UploadFile = File(...), prompt: str = Form(..., min_length=1, max_length=4000),
                mask: UploadFile | None = File(None), n: int = Form(1, ge=1, le=10), size: str = Form("256x256"),
                response_format: Literal["url", "b64_json"] = Form("url"), model: str | None = Form(None),
                state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    limit = state.config.max_upload_bytes
    image_bytes = await _read(image, limit)
    side = _side(size)
    mask_bytes = await _read(mask, limit) if mask else None
    if mask_bytes is not None and _size_of(mask_bytes) != _size_of(image_bytes):
        width, height = _size_of(image_bytes)
        raise BadRequest("mask", f"must be the same size as the image ({width}x{height})")
    init = await run_in_threadpool(store_image_bytes, state, image_bytes, "image", size=(side, side))
    mask_path = await run_in_threadpool(store_image_bytes, state, mask_bytes, "mask", size=(side, side)) \
        if mask_bytes is not None else init
    job = await _run(state, user, {"mode": "inpaint", "prompt": prompt, "init_image": str(init), "mask_image": str(mask_path),
                                   "mask_mode": "transparent", "n_samples": n, "model": _model_name(model)})
    return await run_in_threadpool(_respond, state, request, job, response_format)


@router.post("/variations")
async def variations(request: Request, image: UploadFile = File(...), n: int = Form(1, ge=1, le=10),
                     size: str = Form("256x256"), response_format: Literal["url", "b64_json"] = Form("url"),
                     model: str | None = Form(None), state: StudioState = Depends(get_state),
                     user: User = Depends(current_user)):
    side = _side(size)
    data = await _read(image, state.config.max_upload_bytes)
    init = await run_in_threadpool(store_image_bytes, state, data, "image", "RGB", (side, side))
    job = await _run(state, user, {"mode": "variations", "prompt": "", "init_image": str(init), "n_samples": n,
                                   "model": _model_name(model)})
    return await run_in_threadpool(_respond, state, request, job, response_format)
