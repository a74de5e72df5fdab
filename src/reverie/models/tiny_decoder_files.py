"""Where a tiny decoder (TAESD, TAESDXL) lies in the models folder, found without torch (a request
that runs without torch asks whether one is there; tiny_decoder.py loads it)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFound
from .registry import models_dir

DIFFUSERS_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def tiny_folder_name(family: str) -> str:
    """The models folder's subfolder a model family's tiny decoder is looked for in."""
    return "taesdxl" if family.startswith("sdxl") else "taesd"


def misfit_message(channels: int, enlarges: int, model: str, latent_channels: int, scale: int) -> str:
    """Why a tiny decoder reading `channels`-channel latents, enlarging them `enlarges` times,
    does not fit `model` (its latents: `latent_channels`, `scale` times smaller than its pictures)."""
    return (f"the tiny decoder turns {channels}-channel latents into pictures {enlarges} times larger; {model} makes "
            f"{latent_channels}-channel latents {scale} times smaller than its pictures: use --decoder vae for it")


def find_tiny_decoder(reference: str, family: str) -> Path:
    """The tiny decoder `reference` names for a model of `family`: "tiny" (the models folder's
    `taesd/` or `taesdxl/`), or a path to such a folder or to a single decoder file.
    Raises ModelNotFound naming where to put the files."""
    name = tiny_folder_name(family)
    folder = models_dir() / name if reference == "tiny" else Path(reference)
    if folder.is_file() and folder.suffix in (".safetensors", ".pth"):
        return folder
    if folder.is_dir():
        if all((folder / file).is_file() for file in DIFFUSERS_FILES):
            return folder
        for stem in (f"{name}_decoder", "taesd_decoder", "taesdxl_decoder"):
            for suffix in (".safetensors", ".pth"):
                if (folder / (stem + suffix)).is_file():
                    return folder / (stem + suffix)
    raise ModelNotFound(
        f"decoder: no tiny decoder at {folder}; for {family} models put madebyollin/{name}'s config.json and "
        f"diffusion_pytorch_model.safetensors (or A1111's {name}_decoder.safetensors) in {models_dir() / name}/, "
        "or use --decoder vae")
