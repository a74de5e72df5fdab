"""A dream request: what to steer toward, with which generator and guides, for how long."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...models.mini import MINI_NAME, NATIVE_SIDE as MINI_SIDE
from ...models.registry import native_side
from ...request import MAX_SIDE, BaseRequest

BUILTIN_GENERATOR = MINI_NAME  # reverie-mini's autoencoder latents
DREAM_SIDE = 256  # the size of a dream whose generator has no size of its own
SHOWN_SIDE = 256  # built-in dreams are saved at least this large, through the upscaler
# The optimizers a dream can use: request name -> torch.optim class name.
OPTIMIZERS = {
    "adam": "Adam", "adamw": "AdamW", "adamax": "Adamax", "nadam": "NAdam",
    "radam": "RAdam", "rmsprop": "RMSprop", "adagrad": "Adagrad", "sgd": "SGD",
}


class DreamRequest(BaseRequest):
    """A CLIP-steered dream, or the continuation of one (`continue_from`, a run folder).

    `prompt` uses the VQGAN+CLIP syntax (`text:weight:stop | ...`); `generator` is `mini` (the
    built-in autoencoder's latents), `pixels`, a VQGAN checkpoint, a BigGAN folder, or any model
    reverie can load (its autoencoder is used); `guides` are `mini` and/or CLIP files; `prior`
    is a text-to-image model that adds score distillation to the guides' pull. A continued dream
    takes only what changes; what it leaves out it keeps.
    """

    IMAGE_FIELDS = ("init_image",)

    mode: Literal["dream"] = "dream"
    prompt: str = ""
    continue_from: str | None = None
    image_prompts: list[str] = Field(default_factory=list)  # "path[:weight[:stop]]"
    init_image: Any = None
    generator: str = BUILTIN_GENERATOR
    guides: list[str] = Field(default_factory=lambda: ["mini"])
    # A diffusion model whose score pulls the dream toward pictures it would make ("mini", any
    # model reverie loads, "none", or "auto": mini for the mini generator, none otherwise);
    # prior_weight scales its pull against the guides'.
    prior: str = "auto"
    prior_weight: float = Field(1.0, ge=0.0, le=100.0)
    prior_guidance: float = Field(7.5, ge=0.0, le=50.0)
    smoothness: float = Field(0.0, ge=0.0, le=1000.0)  # total-variation weight
    # None: the generator's own size (reverie-mini's for the built-in one, a GAN's own; else DREAM_SIDE).
    width: int | None = Field(None, ge=16, le=MAX_SIDE)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)
    # Pictures are saved this many times larger, by the built-in upscaler; None: for the built-in
    # generator and GANs the least factor that shows them at SHOWN_SIDE (2 at mini's 128, 4 at a
    # 64 px GAN's), else 1.
    upscale: Literal[1, 2, 4] | None = None
    iterations: int = Field(300, ge=1, le=1_000_000)  # a continued dream: 100 more when not given
    save_every: int = Field(50, ge=1)
    patience: int | None = Field(None, ge=1)  # stop after this many iterations without improvement
    optimizer: str = "adam"
    lr: float | None = Field(None, gt=0.0, le=10.0)  # None: the generator's own default
    cutouts: int = Field(32, ge=1, le=512)
    cut_power: float = Field(1.0, gt=0.0, le=10.0)
    augment: bool = True
    noise: float = Field(0.1, ge=0.0, le=1.0)
    truncation: float = Field(1.0, gt=0.0, le=1.0)  # BigGAN and GANs only
    zoom: float | None = Field(None, ge=1.0, le=2.0)  # zoom-in video: scale per zoom step
    zoom_every: int = Field(10, ge=1)
    video: str | None = None  # also write the snapshots as .mp4, .gif or .webp (in the run folder unless a path)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str):
        if value.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; use one of {', '.join(OPTIMIZERS)}")
        return value.lower()

    @field_validator("guides")
    @classmethod
    def _some_guide(cls, value: list[str]):
        if not value:
            raise ValueError("give at least one guide (mini, or a CLIP file)")
        return value

    @model_validator(mode="after")
    def _prompt_and_sizes(self):
        if self.continue_from is not None:
            return self  # a continued dream keeps its own sizes
        if not self.prompt.strip():
            raise ValueError("give a prompt to dream about, or continue_from a dream's run folder")
        builtin = self.generator == BUILTIN_GENERATOR
        own = MINI_SIDE if builtin else native_side(self.generator)  # a GAN's own size, from its config
        side = own or DREAM_SIDE
        self.width, self.height = self.width or side, self.height or side
        if self.upscale is None:
            longest = max(self.width, self.height)
            self.upscale = next((f for f in (1, 2, 4) if longest * f >= SHOWN_SIDE), 4) if own else 1
        return self
