"""OpenAI-compatible image endpoints, /v1/images: generations, edits, variations.

`size` is the size of the pictures returned; a model that draws small and upscales (reverie-mini
draws at a quarter and upscales 4x) is asked for size / its upscale factor. Edits follow
DALL-E 2: the transparent pixels of the mask (or of the image, without a mask) are repainted.
`url` responses are signed links that work without an API key.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadRequest
from ..gallery.models import User
from .state import StudioState, current_user, get_state, store_image_bytes
from .submit import submit_generation

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


def _base_size(state: StudioState, size: str, model: str | None) -> tuple[int, int, int]:
    """(width, height, upscale) that make pictures of `size`."""
    if size not in SIZES:
        raise BadRequest("size", f"must be one of {', '.join(SIZES)}")
    side = int(size.split("x")[0])
    from ..models.registry import native_side
    from ..studio import default_model
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


def _run(state: StudioState, user: User, fields: dict):
    job = submit_generation(state, user, fields)
    job = state.runner.wait_until_finished(job.id, state.config.sync_timeout_s)
    if job.status != "done":
        raise BadRequest("prompt", job.error or f"the request ended {job.status}")
    return job


@router.post("/generations")
def generations(body: GenerationsBody, request: Request, state: StudioState = Depends(get_state),
                user: User = Depends(current_user)):
    model = _model_name(body.model)
    width, height, upscale = _base_size(state, body.size, model)
    job = _run(state, user, {"mode": "txt2img", "prompt": body.prompt, "n_samples": body.n, "width": width,
                             "height": height, "upscale": upscale, "model": model})
    return _respond(state, request, job, body.response_format)


async def _read(upload: UploadFile, limit: int) -> bytes:
    return await upload.read(limit + 1)  # one byte over the limit is enough to refuse it


def _mask_from_alpha(state: StudioState, data: bytes, field: str):
    """White where the picture is transparent (to repaint), black where it is opaque."""
    picture = Image.open(io.BytesIO(data))
    if "A" not in picture.getbands():
        raise BadRequest(field, "needs transparent pixels (an alpha channel) where the picture should change")
    alpha = picture.getchannel("A")
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return store_image_bytes(state, buffer.getvalue(), field, "L")


@router.post("/edits")
async def edits(request: Request, image: UploadFile = File(...), prompt: str = Form(..., min_length=1, max_length=4000),
                mask: UploadFile | None = File(None), n: int = Form(1, ge=1, le=10), size: str = Form("256x256"),
                response_format: Literal["url", "b64_json"] = Form("url"), model: str | None = Form(None),
                state: StudioState = Depends(get_state), user: User = Depends(current_user)):
    limit = state.config.max_upload_bytes
    image_bytes = await _read(image, limit)
    init = store_image_bytes(state, image_bytes, "image", "RGB")
    mask_path = _mask_from_alpha(state, await _read(mask, limit) if mask else image_bytes, "mask" if mask else "image")
    model = _model_name(model)
    width, height, upscale = _base_size(state, size, model)
    init_picture, mask_picture = Image.open(init), Image.open(mask_path)
    if mask_picture.size != init_picture.size:
        raise BadRequest("mask", f"must be the same size as the image ({init_picture.width}x{init_picture.height})")
    init_picture.resize((width, height), Image.LANCZOS).save(init)
    mask_picture.resize((width, height), Image.NEAREST).save(mask_path)
    job = _run(state, user, {"mode": "inpaint", "prompt": prompt, "init_image": str(init), "mask_image": str(mask_path),
                             "n_samples": n, "model": model, "upscale": upscale})
    return _respond(state, request, job, response_format)


@router.post("/variations")
async def variations(request: Request, image: UploadFile = File(...), n: int = Form(1, ge=1, le=10),
                     size: str = Form("256x256"), response_format: Literal["url", "b64_json"] = Form("url"),
                     model: str | None = Form(None), state: StudioState = Depends(get_state),
                     user: User = Depends(current_user)):
    init = store_image_bytes(state, await _read(image, state.config.max_upload_bytes), "image", "RGB")
    model = _model_name(model)
    width, height, upscale = _base_size(state, size, model)
    picture = Image.open(init).resize((width, height), Image.LANCZOS)
    picture.save(init)
    job = _run(state, user, {"mode": "variations", "prompt": "", "init_image": str(init), "n_samples": n,
                             "model": model, "upscale": upscale})
    return _respond(state, request, job, response_format)
