"""Where a training run computes, and in what precision.

A run's data and its randomness stay on the CPU: every random number comes from the step's own
CPU generator, so a seed draws the same batches and noise on any device. The models, and each
batch as it is used, move to the device. Mixed precision autocasts the forward passes: bf16 on
the CPU (CPUs with avx512_bf16) or a GPU, fp16 on a CUDA GPU with loss scaling (fp16 gradients
underflow without it).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Optional

import torch

from ..device import pick_device
from ..errors import BadRequest

DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")


def training_device(name: str) -> torch.device:
    """`auto`: a CUDA GPU when there is one (else Apple's MPS, else the CPU); a named device must be here."""
    kind, _, index = name.partition(":")
    if kind not in DEVICE_TYPES or (index and (kind == "auto" or not index.isdigit())):
        raise BadRequest("device", f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    device = pick_device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadRequest("device", f"{name} was asked for but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


@dataclass(frozen=True)
class Precision:
    """How a run autocasts its forward passes (`dtype`; None: plain fp32) on `device`."""

    device: torch.device
    dtype: Optional[torch.dtype] = None

    @classmethod
    def choose(cls, device: torch.device, bf16: bool = False, fp16: bool = False) -> "Precision":
        if bf16 and fp16:
            raise BadRequest("fp16", "choose bf16 or fp16, not both")
        if fp16 and device.type != "cuda":
            raise BadRequest("fp16", f"fp16 training needs a CUDA GPU, not {device.type}; use bf16 there (or neither)")
        return cls(device, torch.bfloat16 if bf16 else torch.float16 if fp16 else None)

    @property
    def scaled(self) -> bool:
        """Whether losses are scaled before backward (fp16 only)."""
        return self.dtype == torch.float16

    def autocast(self, enabled: bool = True) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled and self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for one optimizer; a pass-through unless the run is fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scaled)
