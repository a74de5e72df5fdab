"""Turning what the user typed after --model into loaded components.

A reference is, in this order: a built-in name; a path to a diffusers folder or a single-file
checkpoint; the name of one of those inside the models folder; or a hub id, which works only
when online. Naming, finding and listing models reads files only; torch is imported when a
model is loaded.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelNotFound
from .components import ModelComponents
from .diffusers_folder import is_diffusers_folder, load_diffusers_folder
from .gan_folders import builtin_gans, gan_side, is_gan_folder, is_gan_reference
from .mini import MINI_NAME, NATIVE_SIDE as MINI_SIDE, load_mini, mini_installed
from .tiny import TINY_NAME, build_tiny

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
BUILTINS = {
    TINY_NAME: "random weights, SD-shaped; for tests and the demo (pictures are noise)",
    TINY_NAME + "-inpainting": "random weights, 9-channel inpainting UNet; for tests",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class ModelEntry:
    name: str
    kind: str  # builtin, diffusers, single-file, gan
    location: str
    note: str = ""


DEFAULT_MODEL = MINI_NAME


def default_model() -> str:
    """The model a request that names none gets ($REVERIE_DEFAULT_MODEL, else reverie-mini)."""
    return os.environ.get("REVERIE_DEFAULT_MODEL", DEFAULT_MODEL)


def models_dir() -> Path:
    """Where `reverie models` looks, and where --model NAME is found ($REVERIE_MODELS or ./models)."""
    return Path(os.environ.get("REVERIE_MODELS", "models"))


def list_models() -> list[ModelEntry]:
    """The models a request may name (LoRAs and embeddings are listed apart: `lora.list_lora_entries`)."""
    from .lora import is_lora_file

    entries = [ModelEntry(name, "builtin", "built in", note) for name, note in BUILTINS.items()]
    if mini_installed():
        entries.insert(0, ModelEntry(MINI_NAME, "builtin", "built in", "reverie-mini: emoji and icons, trained by this project"))
    for name, path in builtin_gans().items():
        entries.append(ModelEntry(name, "gan", "built in", "a GAN trained by this project (reverie generate --model NAME)"))
    folder = models_dir()
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            if child.is_dir() and is_gan_folder(child):
                entries.append(ModelEntry(child.name, "gan", str(child), "a GAN (`reverie train gan`)"))
            elif child.is_dir() and is_diffusers_folder(child):
                entries.append(ModelEntry(child.name, "diffusers", str(child)))
            elif child.is_file() and child.suffix.lower() in CHECKPOINT_SUFFIXES and not is_lora_file(child):
                entries.append(ModelEntry(child.stem, "single-file", str(child)))
    return entries


def native_side(reference: str) -> int | None:
    """The picture side a small built-in model or a GAN draws best, when it has one (no loading)."""
    if reference == MINI_NAME:
        return MINI_SIDE
    return gan_side(reference) if is_gan_reference(reference) else None


def load_model(reference: str, dtype: torch.dtype | None = None,
               leave_unet: Callable[[object, str], bool] | None = None) -> ModelComponents:
    """Load the model `reference` names (see the module docstring for the forms), fp32 unless
    `dtype`. A diffusers folder's or a single file's UNet may stay on the meta device, its
    weights unread, where `leave_unet` says so (diffusers_folder.py, single_file.py); every
    other form loads whole."""
    import torch

    dtype = dtype or torch.float32
    if reference == MINI_NAME:
        return load_mini(dtype)
    if is_gan_reference(reference):
        raise ModelNotFound(f"{reference} is a GAN, not a diffusion model: it draws without a prompt "
                            f"(reverie generate --model {reference}, mode gan) and dreams (reverie dream -g {reference})")
    if reference in BUILTINS:
        components = build_tiny(inpainting=reference.endswith("-inpainting"))
        return _cast(components, dtype)
    path = find_path(reference)
    if path is not None:
        if path.is_dir():
            if not is_diffusers_folder(path):
                raise ModelNotFound(f"{path} is a folder but has no model_index.json; it is not a diffusers model folder")
            return load_diffusers_folder(path, dtype, leave_unet)
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelNotFound(f"{path} is not a model file; expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
        from .single_file import load_single_file

        return load_single_file(path, dtype=dtype, leave_unet=leave_unet)
    if _HUB_ID.match(reference) and not reference.startswith((".", "/")):
        return _load_from_hub(reference, dtype)
    known = ", ".join(entry.name for entry in list_models())
    raise ModelNotFound(f"no model named {reference!r}: not a file, not a folder, not in {models_dir()}/ (known: {known})")


def find_path(reference: str) -> Path | None:
    """The file or folder `reference` names: a path, or a name in the models folder (None: neither)."""
    direct = Path(reference).expanduser()
    if direct.exists():
        return direct
    folder = models_dir()
    for candidate in [folder / reference] + [folder / (reference + s) for s in CHECKPOINT_SUFFIXES]:
        if candidate.exists():
            return candidate
    return None


def hub_reachable(timeout: float = 2.0) -> bool:
    """False at once when HF_HUB_OFFLINE is set, else whether the hub answers a TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_hub(repo_id: str, dtype: torch.dtype) -> ModelComponents:
    if not hub_reachable():
        raise ModelNotFound(
            f"{repo_id!r} looks like a Hugging Face hub id, but reverie is offline (no connection or "
            f"HF_HUB_OFFLINE=1). On a machine with network run `huggingface-cli download {repo_id} "
            f"--local-dir models/{repo_id.split('/')[-1]}`, copy that folder here, and pass "
            f"--model models/{repo_id.split('/')[-1]}"
        )
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "tokenizer/*"])
    return load_diffusers_folder(folder, dtype)


def _cast(components: ModelComponents, dtype: torch.dtype) -> ModelComponents:
    for module in components.modules:
        if module.dtype != dtype:
            module.to(dtype=dtype)
    return components
