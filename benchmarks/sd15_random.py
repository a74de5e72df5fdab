"""SD 1.5's architecture with random weights, for the benchmarks that run it (speed does not
depend on the weights): built from the configs reverie ships, from torch seed 0, so every
benchmark and every variant gets the same model."""

from __future__ import annotations

import json
from importlib import resources


def sd15_components(in_channels: int = 4, guidance_embedding: int | None = None):
    """The random-weight SD 1.5 model as reverie's ModelComponents (fp32, eval mode); with 9
    `in_channels`, SD 1.5 inpainting's UNet; with a `guidance_embedding` width, an LCM-distilled
    UNet's (LCM Dreamshaper v7's is 256: the guidance scale's embedding as an input)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from reverie.models.clip_tokenizer import clip_tokenizer
    from reverie.models.components import ModelComponents

    root = resources.files("reverie.models") / "configs" / "sd1"
    read = lambda part: json.loads((root / part / "config.json").read_text())  # noqa: E731
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(read("unet") | {"in_channels": in_channels,
                                                      "time_cond_proj_dim": guidance_embedding}).eval()
    vae = AutoencoderKL.from_config(read("vae")).eval()
    text_config = {k: v for k, v in read("text_encoder").items() if not k.startswith("_")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    schedule = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    return ModelComponents("sd15-random", unet, vae, text_encoder, clip_tokenizer(), schedule, family="sd1")
