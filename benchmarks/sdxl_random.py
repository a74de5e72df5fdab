"""SDXL base's architecture with random weights, for the benchmarks that run it (speed does not
depend on the weights): built from the configs reverie ships, from torch seed 0, and written
once as a diffusers folder, as diffusers saves one (its fp32 UNet, 10.3 GB, in two shards)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def sdxl_folder(folder: Path) -> Path:
    """The random-weight SDXL base (fp32 files) at `folder`, written once: every variant of a
    benchmark loads it from disk, as it would load a user's model."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from reverie.models.clip_tokenizer import clip_tokenizer
    from reverie.models.sdxl import OPEN_CLIP_PAD_TOKEN

    root = resources.files("reverie.models") / "configs" / "sdxl"
    read = lambda part: json.loads((root / part / "config.json").read_text())  # noqa: E731
    text = lambda part: CLIPTextConfig(**{k: v for k, v in read(part).items() if not k.startswith("_")})  # noqa: E731
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_config(read("vae")), unet=UNet2DConditionModel.from_config(read("unet")),
        text_encoder=CLIPTextModel(text("text_encoder")), text_encoder_2=CLIPTextModelWithProjection(text("text_encoder_2")),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
        scheduler=EulerDiscreteScheduler.from_config(json.loads((root / "scheduler" / "scheduler_config.json").read_text())))
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(partial)
    partial.rename(folder)
    return folder
