"""Step caching (DeepCache, Ma et al. 2023): a UNet's deep features reused between steps.

From one denoising step to the next, a UNet's deep (low-resolution) features barely change;
its shallow ones carry the detail that does. So every `interval`-th UNet evaluation runs the
whole network and keeps the hidden state that enters the shallowest up block's last layer; the
evaluations in between run only the shallow branch: `conv_in` (whose output is that last
layer's skip connection), the last layer itself and `conv_out`, with the kept deep features in
place of everything in between. Per skipped evaluation that is a small fraction of the UNet.

The schedule counts UNet evaluations, not timesteps: second-order samplers evaluate twice per
step, and Heun's scheduler lists each timestep twice, so a schedule keyed on the timestep's
position in that list finds the first of the two every time and, at interval 2, never refreshes.
(The DeepCache package, 0.1.1, does exactly that, which is why reverie has its own.)

It changes pixels (the skipped evaluations are approximations), so it is an option, recorded in
each picture's settings. The torch-free path splits an OpenVINO UNet at the same place
(openvino_step_cache.py). With interval 1 every evaluation is whole and the pictures are the
same bit for bit as without it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # StepCache's schedule serves the OpenVINO path too (openvino_step_cache.py), without torch
    import torch


def deep_modules(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose outputs a skipped evaluation reuses: every down block, the middle
    block, every up block but the shallowest, and the shallowest one's layers but its last
    (resnet and attention). Between them they make the last layer's input; the last layer's
    other input (its skip connection) is `conv_in`'s output, computed afresh."""
    last = unet.up_blocks[-1]
    modules = [*unet.down_blocks, unet.mid_block, *unet.up_blocks[:-1], *last.resnets[:-1]]
    modules += list(getattr(last, "attentions", None) or [])[:-1]
    return [module for module in modules if module is not None]


class StepCache:
    """The schedule and the kept outputs of one sampling run (one batch)."""

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError("a step cache interval is at least 1")
        self.interval = interval
        self.calls = 0  # UNet evaluations so far
        self.whole = True  # whether the current evaluation runs the whole UNet
        self.kept: dict[int, object] = {}
        self.skipped = 0  # evaluations that reused deep features (for the benchmark)

    def begin(self) -> None:
        self.whole = self.calls % self.interval == 0
        self.skipped += not self.whole
        self.calls += 1

    def wrap(self, index: int, forward):
        def cached(*args, **kwargs):
            if self.whole or index not in self.kept:
                self.kept[index] = forward(*args, **kwargs)
            return self.kept[index]

        return cached


@contextmanager
def step_cache(unet: torch.nn.Module, interval: int | None):
    """Run the UNet with step caching every `interval` evaluations (None: as it is) inside the
    block; the UNet is put back as it was afterwards, also when sampling fails or stops.
    Yields the StepCache (None when off)."""
    if interval is None:
        yield None
        return
    if hasattr(unet, "step_cached"):  # the OpenVINO runtime's stand-in: its export split (openvino_step_cache.py)
        with unet.step_cached(interval) as cache:
            yield cache
        return
    cache = StepCache(interval)
    patched = [unet, *deep_modules(unet)]
    if any("forward" in module.__dict__ for module in patched):
        raise RuntimeError("step_cache: the UNet is already patched (a step cache inside another?)")
    unet_forward = unet.forward

    def forward(*args, **kwargs):
        cache.begin()
        return unet_forward(*args, **kwargs)

    unet.forward = forward
    for index, module in enumerate(patched[1:]):
        module.forward = cache.wrap(index, module.forward)
    try:
        yield cache
    finally:
        for module in patched:
            del module.__dict__["forward"]
