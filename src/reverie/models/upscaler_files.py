"""Where the built-in upscalers' weights lie (models/upscaler.py runs them); named apart from the
network so that finding the files needs no torch (models/mini_bundle.py keys its exports by them)."""

from __future__ import annotations

from pathlib import Path

UPSCALER_DIR = Path(__file__).resolve().parent.parent / "builtin" / "upscaler"
WEIGHTS = "upscaler.safetensors"  # x4
WEIGHTS_X2 = "upscaler-x2.safetensors"


def weights_name(scale: int) -> str:
    """The weight file of the upscaler of `scale` in its folder."""
    return WEIGHTS if scale == 4 else WEIGHTS_X2
