"""A latent diffusion request: txt2img, img2img, variations, inpaint, outpaint."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...errors import BadRequest
from ...models.components import SamplingDefaults
from ...prompts.picture import combination_count, prompt_plan
from ...prompts.styles import get_styles, style_settings, stylized_cfg
from ...prompts.parameters import apply_parameters, aspect_ratio
from ...request import MAX_SEED, MAX_SIDE, BaseRequest
from ...samplers import DEFAULT_SAMPLER, get_sampler

MODES = ("txt2img", "img2img", "variations", "inpaint", "outpaint")
IMAGE_MODES = MODES[1:]

# Sampling settings a request leaves out come from the model (reverie-mini has its own, the ones
# its evaluation used), then from these.
GENERATION_DEFAULTS = SamplingDefaults(steps=25, cfg_scale=7.5, sampler=DEFAULT_SAMPLER)

# Strength when the user gives none: img2img keeps the composition, variations wander a little less.
DEFAULT_STRENGTH = {"img2img": 0.75, "variations": 0.6, "inpaint": 1.0, "outpaint": 1.0}


class GenerationRequest(BaseRequest):
    """What to make. Sizes are in pixels; `seed` None means "pick one at random"."""

    IMAGE_FIELDS = ("init_image", "mask_image")

    mode: Literal["txt2img", "img2img", "variations", "inpaint", "outpaint"] = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    stylize: int | None = Field(None, ge=0, le=1000)
    # The prompt is a template (prompts/templates.py): random mode draws each picture's variant from
    # its seed; combinatorial mode makes one picture per combination, at most max_combinations
    # (more is an error with strict_combinations; else the first ones are made, and a progress
    # message says so).
    combinatorial: bool = False
    max_combinations: int = Field(32, ge=1, le=256)
    strict_combinations: bool = False
    # Prompt expansion (prompts/expansion.py): each picture's variant enriched with words drawn
    # from its own seed, as Fooocus does; the same seed, the same words; recorded in the PNG.
    expand: bool = False
    model: str | None = None
    # txt2img: the picture's size (None: the model's own). Image modes: the size to work at
    # (None: the input's, brought to the model's native size when it draws small; see images.py).
    width: int | None = Field(None, ge=64, le=MAX_SIDE)
    height: int | None = Field(None, ge=64, le=MAX_SIDE)
    # None: the model's own default, else GENERATION_DEFAULTS (see `with_defaults`).
    steps: int | None = Field(None, ge=1, le=500)
    cfg_scale: float | None = Field(None, ge=0.0, le=50.0)
    sampler: str | None = None
    eta: float = Field(0.0, ge=0.0, le=1.0)  # DDIM's eta (fresh noise per step); other samplers ignore it
    n_samples: int = Field(4, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000)
    strength: float | None = Field(None, ge=0.0, le=1.0)
    init_image: Any = None  # a path or a PIL image
    mask_image: Any = None  # white = repaint, black = keep
    mask_mode: Literal["white", "black", "transparent"] = "white"  # what marks the area to repaint
    mask_blur: int = Field(4, ge=0, le=64)
    outpaint_left: int = Field(0, ge=0, le=MAX_SIDE)
    outpaint_right: int = Field(0, ge=0, le=MAX_SIDE)
    outpaint_up: int = Field(0, ge=0, le=MAX_SIDE)
    outpaint_down: int = Field(0, ge=0, le=MAX_SIDE)
    # txt2img: enlarge the pictures this many times with the built-in upscaler (None: the model's
    # own default, 2 for reverie-mini: 128 px shown at 256). Image modes: work at the input's size
    # divided by this and enlarge back (None: chosen from the model's native size).
    upscale: Literal[1, 2, 4] | None = None
    # Make the (first) batch but keep only its picture number `keep_only`: how `--from` re-makes a
    # picture of a batch bit for bit (batched matrix products round differently from single ones).
    keep_only: int | None = Field(None, ge=0)
    rerank: int = Field(1, ge=1, le=16)  # make this many candidates per picture kept; keep the best-scored
    score: bool = False  # record each picture's CLIP score against the prompt (always, when reranking)
    scorer: str = "mini"  # the CLIP that scores: mini (built in) or a CLIP file, as dreaming's guides
    attention_slicing: bool = False  # compute attention in slices: less memory, slower
    # What runs the UNet: torch, openvino (the CPU, fp32; models/openvino_runtime.py), or auto
    # (openvino where it is installed and can run the request, else torch). A picture records the
    # runtime that made it, so `--from` makes it again with the same one.
    runtime: Literal["auto", "torch", "openvino"] = "auto"
    # The precision the model's weights rest in between uses (models/weight_storage.py): auto, the
    # compute dtype's; fp16 or bf16 halve an fp32 model's memory, each layer computed in `dtype`
    # (the pictures change a little: PSNR in benchmarks/README.md).
    weights: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # int8: the UNet's convolutions and most linear layers quantized to int8, weights and inputs
    # (models/int8_unet.py; once per model, calibrated on its own denoising), on OpenVINO where
    # the model runs without torch. Faster where the CPU has int8 dot products (VNNI); the
    # pictures change more than bf16's.
    quantize: Literal["none", "int8"] = "none"
    vae_tiling: bool | None = None  # None: tiled only when a whole decode would not fit in free memory
    # txt2img: "W:H", a size of about the model's native area with that shape (width and height,
    # when given, win: they are what a picture made this way records; one of them and a ratio
    # give the other). See images.txt2img_size.
    aspect_ratio: str | None = None
    # How different the pictures of a batch are, 0..100 (None: each from its own seed's noise,
    # as 100). See chaos.py.
    chaos: int | None = Field(None, ge=0, le=100)
    tile: bool = False  # seamless tiles: circular padding in the UNet, the VAE and the upscaler
    progress_video: bool = False  # Midjourney's --video: a video of the pictures being made (progress_video.py)
    # SDXL: a refiner model (a name or path, as `model`) that takes over the denoising for the last
    # part of the steps; `refiner_switch` is the fraction of the steps the base model does (A1111's
    # "switch at"). See batches.refine.
    refiner: str | None = None
    refiner_switch: float = Field(0.8, gt=0.0, lt=1.0)
    # The Midjourney parameters typed after the prompt (`--ar 16:9 --no cars`), as read: recorded
    # for the metadata, never applied again (the prompt they were taken from is kept without them).
    prompt_parameters: dict = {}
    # Step caching (models/step_cache.py): the UNet's deep features computed whole every this many
    # evaluations and reused in between. Faster; changes pixels a little (1: whole every time, the
    # same pixels as None, off).
    step_cache: int | None = Field(None, ge=1, le=10)
    # What turns latents into pixels: the model's own VAE, or a tiny decoder (TAESD, much faster,
    # a little softer): "tiny" finds it in the models folder (taesd/, taesdxl/), or a path to one.
    # See models/tiny_decoder.py.
    decoder: str = "vae"

    @model_validator(mode="before")
    @classmethod
    def _typed_parameters(cls, data):
        """Parameters typed after the prompt become fields (prompts/parameters.py), whichever
        front door the prompt came through."""
        return apply_parameters(data) if isinstance(data, dict) else data

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None):
        if value is not None and value % 8:
            lower, upper = value - value % 8, value - value % 8 + 8
            raise ValueError(f"must be a multiple of 8 (try {lower} or {upper})")
        return value

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, value: str | None):
        if value is None:
            return None
        width, height = aspect_ratio(value)
        return f"{width}:{height}"

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None):
        return None if value is None else get_sampler(value).name

    @model_validator(mode="after")
    def _mode_inputs(self):
        if self.mode != "txt2img" and self.init_image is None:
            raise ValueError(f"mode {self.mode} needs an init image (init_image)")
        if self.mode == "inpaint" and self.mask_image is None:
            raise ValueError("mode inpaint needs a mask image (mask_image): white where to repaint")
        if self.mode == "outpaint" and not any(self.outpaint_extents):
            raise ValueError("mode outpaint needs at least one of outpaint_left/right/up/down > 0")
        if self.keep_only is not None and (self.keep_only >= self.n_samples or self.n_iter > 1 or self.rerank > 1):
            raise ValueError("keep_only picks one picture of a single batch: below n_samples, with n_iter and rerank 1")
        # Raised as BadRequest so they name their own field (a model-level ValueError names none).
        if self.aspect_ratio is not None and self.mode != "txt2img":
            raise BadRequest("aspect_ratio", f"sets the shape of a new picture (txt2img); mode {self.mode} keeps its "
                             "input's shape: give width and height to resize it, or outpaint to extend it")
        if self.chaos is not None and self.mode != "txt2img" and (self.mode in ("img2img", "variations")
                                                                  or self.effective_strength < 1):
            raise BadRequest("chaos", f"mixes the starting noise of pictures drawn from noise (txt2img, inpaint and "
                             f"outpaint at strength 1); for mode {self.mode} the strength sets how far pictures wander")
        if self.tile and self.decoder != "vae":
            raise BadRequest("decoder", "seamless tiles (tile) are decoded by the model's own VAE, padded circularly; "
                                        "leave the decoder out (vae) or tile out")
        if self.sampler == "lcm" and (self.steps or 0) > 50:
            raise ValueError("the lcm sampler takes at most 50 steps (steps)")
        return self

    @model_validator(mode="after")
    def _prompt_templates(self):
        """Templates that cannot expand, unknown styles and too many combinations are refused now,
        before any work (BadRequest naming the field)."""
        plan = prompt_plan(self)
        if self.combinatorial:
            if self.rerank > 1:
                raise BadRequest("rerank", "combinatorial mode makes one picture per combination; "
                                           "best-of (rerank) would choose among different prompts: leave one of them out")
            if plan.capped and self.strict_combinations:
                raise BadRequest("max_combinations", f"the prompt has more than {self.max_combinations} combinations; "
                                                     "raise max_combinations (up to 256) or use fewer alternatives")
        return self

    def with_style_settings(self) -> "GenerationRequest":
        """The request with the fields its style presets set (`settings`) filled where it left them unset."""
        updates = {name: value for name, value in style_settings(self.styles).items() if getattr(self, name) is None}
        if "sampler" in updates:
            updates["sampler"] = get_sampler(updates["sampler"]).name
        return self.model_copy(update=updates) if updates else self

    def with_seed(self) -> "GenerationRequest":
        """The seed fixed; a random seed for a combinatorial request is a multiple of its
        combination count, so its pictures show the combinations in order."""
        if self.seed is not None and self.seed >= 0:
            return self
        request = super().with_seed()
        if self.combinatorial:
            request = request.model_copy(update={"seed": request.seed - request.seed % combination_count(self)})
        return request

    def guidance_scale(self) -> float:
        """The CFG scale the sampler uses: `cfg_scale`, moved by `stylize` when no style preset
        takes it (prompts/styles.py, `stylized_cfg`)."""
        return stylized_cfg(float(self.cfg_scale), self.stylize, bool(get_styles(self.styles)))

    def with_defaults(self, model_defaults: SamplingDefaults | None = None) -> "GenerationRequest":
        """The request with the sampling settings it left out filled in: the model's own
        defaults first (`model_defaults`), then GENERATION_DEFAULTS."""
        defaults = model_defaults or GENERATION_DEFAULTS
        updates = {name: getattr(defaults, name) for name in ("steps", "cfg_scale", "sampler") if getattr(self, name) is None}
        return self.model_copy(update=updates) if updates else self

    @property
    def outpaint_extents(self) -> tuple[int, int, int, int]:
        return (self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down)

    @property
    def effective_strength(self) -> float:
        if self.strength is not None:
            return self.strength
        return DEFAULT_STRENGTH.get(self.mode, 1.0)

    def made_count(self) -> int:
        """Pictures the request's batches make (before `keep_only`): n_samples x n_iter, or in
        combinatorial mode its combinations x n_iter, in batches of n_samples (the last may be smaller)."""
        if self.combinatorial:
            return combination_count(self) * self.n_iter
        return self.n_samples * self.n_iter

    def batches_done(self) -> int:
        """Batches an earlier run finished (`made`), which resuming skips; a partly written one is
        made again whole (a picture is bit for bit the same only with its whole batch). 0 for
        best-of-N (the choice needs every candidate again) or a picture picked from a batch."""
        return self.made // self.n_samples if self.rerank == 1 and self.keep_only is None else 0

    def batch_count(self) -> int:
        return 1 if self.keep_only is not None else -(-self.made_count() // self.n_samples)

    def picture_count(self) -> int:
        return 1 if self.keep_only is not None else self.made_count()

    def candidate_count(self) -> int:
        return self.picture_count() * self.rerank

    def batch_of(self, seed: int) -> dict:
        """The fields that re-make the picture of `seed` (one this request made, a candidate too)
        exactly: its whole batch, keeping only it."""
        base = self.seed if self.seed is not None and self.seed >= 0 else 0
        offset = (seed - base) % (MAX_SEED + 1)
        if self.combinatorial:
            # The picture's combination follows from its seed; its batch (the last one may be
            # smaller) is made again whole, keeping only it.
            if offset >= self.made_count():
                return {"seed": seed, "n_samples": 1, "n_iter": 1, "keep_only": 0}
            start = offset - offset % self.n_samples
            size = min(self.n_samples, self.made_count() - start)
            return {"seed": (base + start) % (MAX_SEED + 1), "n_samples": size, "n_iter": 1,
                    "keep_only": offset - start}
        if self.keep_only is not None and offset == self.keep_only:
            # Made again from its batch (`--from`): that batch again, keeping it.
            return {"seed": base, "n_samples": self.n_samples, "n_iter": 1, "rerank": 1, "keep_only": self.keep_only}
        if offset >= self.candidate_count() or self.n_samples == 1:
            return {"seed": seed, "n_samples": 1, "n_iter": 1, "rerank": 1, "keep_only": None}
        start = (base + offset - offset % self.n_samples) % (MAX_SEED + 1)
        return {"seed": start, "n_iter": 1, "rerank": 1, "keep_only": offset % self.n_samples}

    def image_seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ... over every batch, as the original scripts did."""
        base = self.seed if self.seed is not None and self.seed >= 0 else 0
        return [(base + i) % (MAX_SEED + 1) for i in range(self.made_count())]


def resolve(request: GenerationRequest) -> GenerationRequest:
    """Fix the seed and the model, and for variations borrow the source picture's prompt; a
    request that scores its pictures needs a prompt to score them against."""
    from ...models.registry import default_model
    from ...outputs.metadata import read_png_info

    request = request.with_seed().with_style_settings()
    updates = {}
    if not request.model:
        updates["model"] = default_model()
    if request.mode == "variations" and not request.prompt and isinstance(request.init_image, str):
        try:
            source = read_png_info(request.init_image)["reverie"]
        except Exception:  # an unreadable picture is reported when the run loads it
            source = None
        if source:
            # The source picture's own prompt as it was encoded (its template's variant, styled).
            own = source.get("prompt") or source["settings"]
            updates["prompt"] = own.get("prompt", "")
            updates["negative_prompt"] = own.get("negative_prompt", "")
    request = request.model_copy(update=updates) if updates else request
    if (request.rerank > 1 or request.score) and not request.prompt.strip():
        raise BadRequest("rerank" if request.rerank > 1 else "score", "needs a prompt to score the pictures against")
    return request
