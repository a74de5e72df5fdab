"""Saving and loading one module's weights as a single safetensors file (the small built-ins)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import BadCheckpoint, ModelNotFound


def save_weights(module: torch.nn.Module, path: Path, half: bool = True) -> Path:
    """Write `module`'s state dict to `path` (fp16 unless `half` is False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    save_file({k: v.to(dtype).contiguous() for k, v in module.state_dict().items()}, path)
    return path


def fill_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load `state` into `module` key for key; a mismatch is a BadCheckpoint that says `what`
    and the first key or shape that differs."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise BadCheckpoint(f"{what}: {first.strip()}") from None
    return module


def load_weights(module: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """Fill `module` from `path` in fp32; a missing or damaged file names `what` and the path."""
    if not path.is_file():
        raise ModelNotFound(f"{what} is not installed: {path} is missing")
    try:
        module.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise BadCheckpoint(f"{path} is damaged ({str(exc).splitlines()[0]}); reinstall reverie") from None
    return module.eval()
