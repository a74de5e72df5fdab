"""Where reverie's GANs are and what they are, from their config files alone: no torch.

A reference names a GAN as `gan:NAME` (a built-in GAN or a folder in the models folder),
`gan:PATH` or PATH (a GAN folder, or a `reverie train gan` run folder holding export/). Request
validation and model listings use these; loading the network is `models/gan.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelNotFound

KIND = "gan"
CLASS_NAME = "ReverieGANGenerator"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "generator.safetensors"
EXPORT_DIR = "export"  # inside a training run folder
PREFIX = "gan:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"


def read_config(folder: Path) -> dict | None:
    """The folder's GAN config, or None when it is not a GAN folder (no tensors read)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and (data.get("kind") == KIND or data.get("_class_name") == CLASS_NAME):
        return data
    return None


def is_gan_folder(path: str | Path) -> bool:
    return read_config(Path(path)) is not None


def gan_folder(path: Path) -> Path:
    """A run folder stands for its export/; any other path is itself."""
    if not is_gan_folder(path) and is_gan_folder(path / EXPORT_DIR):
        return path / EXPORT_DIR
    return path


def _models_dir() -> Path:
    return Path(os.environ.get("REVERIE_MODELS", "models"))


def builtin_gans() -> dict[str, Path]:
    """{name: folder} of the GANs shipped in reverie/builtin (folders whose config says kind gan)."""
    if not BUILTIN_DIR.is_dir():
        return {}
    return {child.name: child for child in sorted(BUILTIN_DIR.iterdir()) if child.is_dir() and is_gan_folder(child)}


def is_gan_reference(reference: str | None) -> bool:
    """Whether a --model/--generator reference names a GAN: `gan:...`, or a GAN folder (no tensors read)."""
    if not reference:
        return False
    if reference.startswith(PREFIX) or reference in builtin_gans():
        return True
    path = Path(reference).expanduser()
    if path.is_dir():
        return is_gan_folder(gan_folder(path))
    candidate = _models_dir() / reference
    return candidate.is_dir() and is_gan_folder(gan_folder(candidate))


def resolve_gan(reference: str) -> Path:
    """The GAN folder a reference names: `gan:NAME` (a built-in GAN or a folder in the models
    folder), `gan:PATH` or PATH (a GAN folder, or a training run folder holding export/)."""
    name = reference.removeprefix(PREFIX)
    if not name:
        raise ModelNotFound("gan: give the GAN after the colon: gan:NAME (models folder) or gan:FOLDER")
    if name in builtin_gans():
        return builtin_gans()[name]
    listed = _models_dir() / name
    if "/" not in name and listed.is_dir() and is_gan_folder(gan_folder(listed)):
        return gan_folder(listed)
    for candidate in (Path(name).expanduser(), listed):
        if candidate.is_dir():
            folder = gan_folder(candidate)
            if not is_gan_folder(folder):
                raise ModelNotFound(f"{candidate} is not a GAN folder: expected {CONFIG_NAME} with \"kind\": \"gan\" "
                                    f"and {WEIGHTS_NAME}, or a `reverie train gan` run folder with {EXPORT_DIR}/")
            return folder
    known = ", ".join([*builtin_gans(), *(p.name for p in list_gan_folders())]) or "none"
    raise ModelNotFound(f"no GAN named {name!r}: not a folder, not in {_models_dir()}/ (GANs there: {known})")


def list_gan_folders() -> list[Path]:
    """The GAN folders directly inside the models folder."""
    folder = _models_dir()
    if not folder.is_dir():
        return []
    return [child for child in sorted(folder.iterdir()) if child.is_dir() and is_gan_folder(child)]


def gan_side(reference: str) -> int | None:
    """The picture side of the GAN a reference names, from its config alone; None when it names none."""
    try:
        return int(read_config(resolve_gan(reference))["size"])
    except (ModelNotFound, TypeError, KeyError, ValueError):
        return None
