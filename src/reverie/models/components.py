"""The loaded parts of a latent diffusion model, whatever file they came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingDefaults:
    """The sampling settings a model draws best with, for requests that leave them out."""

    steps: int
    cfg_scale: float
    sampler: str


# A UNet distilled with guidance (LCM's: the scale is its input) draws in a few LCM steps: LCM's
# authors' settings for LCM Dreamshaper v7 (4 steps, guidance 8).
LCM_DEFAULTS = SamplingDefaults(steps=4, cfg_scale=8.0, sampler="lcm")


def distilled_defaults(unet_config) -> SamplingDefaults | None:
    """LCM_DEFAULTS for a UNet (its config, a dict or diffusers' FrozenDict) distilled with
    guidance (`time_cond_proj_dim` set), else None (the general defaults)."""
    return LCM_DEFAULTS if unet_config.get("time_cond_proj_dim") else None


@dataclass
class ModelComponents:
    """Everything a diffusion method needs from a model.

    `unet` is any denoiser with the diffusers UNet2DConditionModel call signature and a
    `config` carrying `in_channels` and `sample_size`; the engine does not care which
    architecture it is. `text_encoder`/`tokenizer` are the transformers pair that turns
    prompts into cross-attention states; SDXL adds a second pair (`text_encoder_2`, a
    CLIPTextModelWithProjection, and `tokenizer_2`), and its refiner has only that second pair
    (`text_encoder`/`tokenizer` None). `scheduler_config` is the model's own noise
    schedule (beta schedule, prediction type, ...) from which every sampler is built.
    Components are shared by every request through the model cache: nothing here holds the
    state of one request.
    """

    name: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    source: str = ""
    family: str = "sd1"  # sd1, sd2, mini, tiny ...
    sampling: SamplingDefaults | None = None  # None: the general defaults
    default_upscale: int = 1  # the built-in upscaler's factor for pictures of requests that name none
    config_name: str = ""  # for single files: the shipped configuration folder they were read with
    # SDXL (family "sdxl", "sdxl-refiner"): OpenCLIP bigG with its projection, and its tokenizer.
    text_encoder_2: Any = None
    tokenizer_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        """True for SDXL base and refiner models (two-encoder conditioning, size/crop time ids)."""
        return self.family.startswith("sdxl")

    @property
    def is_inpainting_model(self) -> bool:
        """True for UNets trained with image+mask channels (9 input channels)."""
        return int(self.unet.config.in_channels) == 9

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The picture size, in pixels, the model was trained at."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Picture sides the model draws exactly are multiples of this: the VAE's factor times the
        UNet's own downsampling (reverie-mini: 8 x 4 = 32), so every level has whole latents."""
        levels = len(getattr(self.unet.config, "block_out_channels", None) or [0]) - 1
        return self.vae_scale_factor * 2**levels

    @property
    def modules(self) -> tuple:
        return tuple(m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2) if m is not None)


def unet_parked(unet) -> bool:
    """Whether the torch UNet's (or another module's) weights are not in memory: let go while its
    OpenVINO export serves, or never read (methods/diffusion/run.py, `park_torch_unet`)."""
    import torch

    first = next(unet.parameters(), None) if isinstance(unet, torch.nn.Module) else None
    return first is not None and first.is_meta
