"""BigGAN in the pytorch-pretrained-biggan format: a folder with config.json + pytorch_model.bin.

The architecture comes from the `pytorch-pretrained-biggan` package; its own `from_pretrained`
unpickles with a plain torch.load and loads non-strictly, so reverie reads the weights itself
(no code from the file is run) and loads them strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import BadCheckpoint, ModelNotFound
from .single_file import read_state_dict
from .weights import fill_exactly

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("pytorch_model.bin", "model.safetensors")


def is_biggan_folder(path: Path) -> bool:
    config = path / CONFIG_NAME
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"z_dim", "num_classes", "output_dim"} <= data.keys()


def load_biggan(folder: str | Path, dtype: torch.dtype = torch.float32):
    """The BigGAN in `folder`, filled strictly; raises ModelNotFound / BadCheckpoint naming the file."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise ModelNotFound(f"no BigGAN at {folder}: expected a folder with {CONFIG_NAME} and pytorch_model.bin")
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelNotFound(f"{folder} has {CONFIG_NAME} but no weights ({' or '.join(WEIGHT_NAMES)})")
    try:
        config = BigGANConfig.from_json_file(str(folder / CONFIG_NAME))
        model = BigGAN(config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadCheckpoint(f"{folder / CONFIG_NAME} is not a BigGAN config ({exc})") from None
    fill_exactly(model, read_state_dict(weights), f"{weights.name} does not match {CONFIG_NAME}")
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)
