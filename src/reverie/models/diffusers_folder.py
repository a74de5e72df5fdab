"""Loading a model saved in the diffusers folder layout (model_index.json + one folder a part)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import BadCheckpoint, ModelNotFound
from .components import ModelComponents

REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def load_diffusers_folder(path: str | Path, dtype: torch.dtype = torch.float32) -> ModelComponents:
    """Load every part of a local diffusers pipeline folder, never reaching for the network."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # reverie shows its own progress

    path = Path(path)
    if not path.is_dir():
        raise ModelNotFound(f"no model folder at {path}")
    index = _read_index(path)
    missing = [part for part in REQUIRED_PARTS if part not in index]
    if missing:
        raise BadCheckpoint(f"{path}/model_index.json lacks {', '.join(missing)}: not a Stable Diffusion-style pipeline")
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path,
            dtype=dtype,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
            use_safetensors=None,
        )
    except (OSError, ValueError, EnvironmentError, RuntimeError, KeyError) as exc:
        raise BadCheckpoint(f"could not load the model folder {path}: {_first_line(exc)}") from None
    for name in ("unet", "vae", "text_encoder"):
        getattr(pipe, name).eval().requires_grad_(False)
    family = index.get("_reverie_family") or _guess_family(pipe)
    return ModelComponents(
        name=path.name,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler_config=dict(pipe.scheduler.config),
        source=str(path),
        family=family,
    )


def _read_index(path: Path) -> dict:
    try:
        return json.loads((path / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadCheckpoint(f"{path}/model_index.json is not valid JSON ({exc})") from None


def _guess_family(pipe) -> str:
    dim = int(pipe.unet.config.cross_attention_dim)
    return {768: "sd1", 1024: "sd2"}.get(dim, "custom")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
