"""The one request every front door builds, and the result every method returns.

Validation happens here, once, with messages that name the field to change; methods can
trust what they receive.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BadRequest
from .samplers import DEFAULT_SAMPLER, get_sampler

Mode = Literal["txt2img", "img2img", "variations", "inpaint", "outpaint", "upscale"]
MAX_SIDE = 4096
MAX_SEED = 2**32 - 1

# Sampling settings a request leaves out come from the model (reverie-mini has its own, the ones
# its evaluation used), then from these.
GENERATION_DEFAULTS = {"steps": 25, "cfg_scale": 7.5, "sampler": DEFAULT_SAMPLER}

# Strength when the user gives none: img2img keeps the composition, variations wander a little less.
DEFAULT_STRENGTH = {"img2img": 0.75, "variations": 0.6, "inpaint": 1.0, "outpaint": 1.0}


class GenerationRequest(BaseModel):
    """What to make. Sizes are in pixels; `seed` None means "pick one at random"."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=False)

    mode: Mode = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None
    width: int | None = Field(None, ge=64, le=MAX_SIDE)
    height: int | None = Field(None, ge=64, le=MAX_SIDE)
    # None: the model's own default, else GENERATION_DEFAULTS (see `with_defaults`).
    steps: int | None = Field(None, ge=1, le=500)
    cfg_scale: float | None = Field(None, ge=0.0, le=50.0)
    sampler: str | None = None
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    n_samples: int = Field(4, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000)
    strength: float | None = Field(None, ge=0.0, le=1.0)
    init_image: Any = None  # a path or a PIL image
    mask_image: Any = None  # white = repaint, black = keep
    mask_blur: int = Field(4, ge=0, le=64)
    outpaint_left: int = Field(0, ge=0, le=MAX_SIDE)
    outpaint_right: int = Field(0, ge=0, le=MAX_SIDE)
    outpaint_up: int = Field(0, ge=0, le=MAX_SIDE)
    outpaint_down: int = Field(0, ge=0, le=MAX_SIDE)
    upscale: Literal[1, 2, 4] | None = None  # None: the model's own default (2 for reverie-mini: 128 px shown at 256)
    rerank: int = Field(1, ge=1, le=16)  # make this many candidates per picture kept; keep the best-scored
    score: bool = False  # record each picture's CLIP score against the prompt (always, when reranking)
    scorer: str = "mini"  # the CLIP that scores: mini (built in) or a CLIP file, as dreaming's guides
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    attention_slicing: bool | None = None  # None: decided from the size and free memory
    vae_tiling: bool | None = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None, info):
        if value is not None and value % 8:
            lower, upper = value - value % 8, value - value % 8 + 8
            raise ValueError(f"must be a multiple of 8 (try {lower} or {upper})")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None):
        return None if value is None else get_sampler(value).name

    @field_validator("init_image", "mask_image")
    @classmethod
    def _image_ref(cls, value):
        if value is None or isinstance(value, Image.Image):
            return value
        if isinstance(value, (str, Path)):
            return str(value)
        raise ValueError("must be a file path or a PIL image")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str):
        base = value.split(":")[0]
        if base not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _mode_inputs(self):
        needs_image = self.mode != "txt2img"
        if needs_image and self.init_image is None:
            raise ValueError(f"mode {self.mode} needs an init image (init_image)")
        if self.mode == "inpaint" and self.mask_image is None:
            raise ValueError("mode inpaint needs a mask image (mask_image): white where to repaint")
        if self.mode == "outpaint" and not any(self.outpaint_extents):
            raise ValueError("mode outpaint needs at least one of outpaint_left/right/up/down > 0")
        if self.rerank > 1 and self.mode == "upscale":
            raise ValueError("rerank: upscaling makes one picture, there is nothing to choose from; use 1")
        if self.sampler == "lcm" and (self.steps or 0) > 50:
            raise ValueError("the lcm sampler takes at most 50 steps (steps)")
        return self

    def with_defaults(self, model_defaults: dict | None = None) -> "GenerationRequest":
        """The request with the sampling settings it left out filled in: the model's own
        defaults first (`model_defaults`), then GENERATION_DEFAULTS."""
        defaults = GENERATION_DEFAULTS | (model_defaults or {})
        updates = {name: defaults[name] for name in GENERATION_DEFAULTS if getattr(self, name) is None}
        return self.model_copy(update=updates) if updates else self

    @property
    def outpaint_extents(self) -> tuple[int, int, int, int]:
        return (self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down)

    @property
    def effective_strength(self) -> float:
        if self.strength is not None:
            return self.strength
        return DEFAULT_STRENGTH.get(self.mode, 1.0)

    def with_seed(self) -> "GenerationRequest":
        """A copy whose seed is fixed: the given one, or a random one when none (or -1) was given."""
        if self.seed is not None and self.seed >= 0:
            return self
        return self.model_copy(update={"seed": random.randint(0, MAX_SEED - 64 * 1000)})

    def image_seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ... over every batch, as the original scripts did."""
        base = self.seed if self.seed is not None and self.seed >= 0 else 0
        return [(base + i) % (MAX_SEED + 1) for i in range(self.n_samples * self.n_iter)]

    def settings(self) -> dict:
        """The request as plain JSON-able data (images as paths or a placeholder)."""
        data = self.model_dump(exclude={"init_image", "mask_image"})
        for key in ("init_image", "mask_image"):
            value = getattr(self, key)
            data[key] = value if (value is None or isinstance(value, str)) else "<image>"
        return data


def make_request(**fields) -> GenerationRequest:
    """Build a request, turning pydantic's errors into one BadRequest that names the field."""
    try:
        return GenerationRequest(**fields)
    except ValidationError as exc:
        raise bad_request_from(exc) from None


def bad_request_from(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return BadRequest(field, message)


BUILTIN_GENERATOR, BUILTIN_DREAM_SIDE, DREAM_SIDE = "mini", 128, 256
SHOWN_SIDE = 256  # built-in dreams are saved at least this large, through the upscaler
DREAM_OPTIMIZERS = ("adam", "adamw", "adamax", "nadam", "radam", "rmsprop", "adagrad", "sgd")


class DreamRequest(BaseModel):
    """A CLIP-steered dream: what to steer toward, with which generator and guides, for how long.

    `prompt` uses the VQGAN+CLIP syntax (`text:weight:stop | ...`); `generator` is `mini` (the
    built-in autoencoder's latents), `pixels`, a VQGAN checkpoint, a BigGAN folder, or any model
    reverie can load (its autoencoder is used); `guides` are `mini` and/or CLIP files; `prior`
    is a text-to-image model that adds score distillation to the guides' pull.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    prompt: str
    image_prompts: list[str] = Field(default_factory=list)  # "path[:weight[:stop]]"
    init_image: Any = None
    generator: str = "mini"
    guides: list[str] = Field(default_factory=lambda: ["mini"])
    # A diffusion model whose score pulls the dream toward pictures it would make ("mini", any
    # model reverie loads, "none", or "auto": mini for the mini generator, none otherwise);
    # prior_weight scales its pull against the guides'.
    prior: str = "auto"
    prior_weight: float = Field(1.0, ge=0.0, le=100.0)
    prior_guidance: float = Field(7.5, ge=0.0, le=50.0)
    smoothness: float = Field(0.0, ge=0.0, le=1000.0)  # total-variation weight
    # None: the generator's own size (128 for the built-in one, reverie-mini's size; else 256).
    width: int | None = Field(None, ge=16, le=MAX_SIDE)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)
    # Pictures are saved this many times larger, by the built-in upscaler; None: for the built-in
    # generator the least factor that shows them at 256 px (2 at mini's 128), else 1.
    upscale: Literal[1, 2, 4] | None = None
    iterations: int = Field(300, ge=1, le=1_000_000)
    save_every: int = Field(50, ge=1)
    patience: int | None = Field(None, ge=1)  # stop after this many iterations without improvement
    optimizer: str = "adam"
    lr: float | None = Field(None, gt=0.0, le=10.0)  # None: the generator's own default
    cutouts: int = Field(32, ge=1, le=512)
    cut_power: float = Field(1.0, gt=0.0, le=10.0)
    augment: bool = True
    noise: float = Field(0.1, ge=0.0, le=1.0)
    truncation: float = Field(1.0, gt=0.0, le=1.0)  # BigGAN only
    zoom: float | None = Field(None, ge=1.0, le=2.0)  # zoom-in video: scale per zoom step
    zoom_every: int = Field(10, ge=1)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    device: str = "auto"

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str):
        if value.lower() not in DREAM_OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; use one of {', '.join(DREAM_OPTIMIZERS)}")
        return value.lower()

    @field_validator("init_image")
    @classmethod
    def _image_ref(cls, value):
        return GenerationRequest._image_ref(value)

    @field_validator("guides")
    @classmethod
    def _some_guide(cls, value: list[str]):
        if not value:
            raise ValueError("give at least one guide (mini, or a CLIP file)")
        return value

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str):
        return GenerationRequest._device_name(value)

    @model_validator(mode="after")
    def _sizes(self):
        builtin = self.generator == BUILTIN_GENERATOR
        side = BUILTIN_DREAM_SIDE if builtin else DREAM_SIDE
        self.width, self.height = self.width or side, self.height or side
        if self.upscale is None:
            longest = max(self.width, self.height)
            self.upscale = next((f for f in (1, 2, 4) if longest * f >= SHOWN_SIDE), 4) if builtin else 1
        return self

    def with_seed(self) -> "DreamRequest":
        if self.seed is not None and self.seed >= 0:
            return self
        return self.model_copy(update={"seed": random.randint(0, MAX_SEED)})

    def settings(self) -> dict:
        data = self.model_dump(exclude={"init_image"})
        data["init_image"] = self.init_image if (self.init_image is None or isinstance(self.init_image, str)) else "<image>"
        return data


def make_dream_request(**fields) -> DreamRequest:
    try:
        return DreamRequest(**fields)
    except ValidationError as exc:
        raise bad_request_from(exc) from None
