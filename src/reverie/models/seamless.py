"""Seamless tiles (`--tile`, A1111's "Tiling"): pictures that repeat without a seam.

The networks that make them pad their convolutions circularly (`circular_convolutions`): the
torch pipeline runs its UNet and VAE so for a tile request (methods/diffusion/pipelines.py), and
an OpenVINO bundle exports them so once, beside the model's own parts
(models/openvino_bundle.py: `make_tile_parts`). A tile is enlarged with a margin of itself
wrapped around it (`enlarged_seamlessly`), so the larger one is seamless too. Torch is imported
only by what changes a network.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
from PIL import Image


@contextmanager
def circular_convolutions(*modules):
    """Every Conv2d in the torch `modules` padding circularly while inside; each put back as it
    was after, also when what runs inside fails."""
    import torch

    convs = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved):
            conv.padding_mode = mode


def enlarged_seamlessly(picture: Image.Image, factor: int, margin: int,
                        enlarge: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """`enlarge(picture)` (`factor` times larger) for a seamless tile: enlarged with `margin`
    pixels of its opposite edges around it, as it repeats, and that margin cut off again, so
    its edges are enlarged as its middle is (`margin` wider than the enlarger looks: then the
    middle is what a circular pass would give). A `margin` of 0 enlarges it as it is."""
    if not margin:
        return enlarge(picture)
    array = np.asarray(picture.convert("RGB"))
    larger = enlarge(Image.fromarray(np.pad(array, [(margin, margin), (margin, margin), (0, 0)], mode="wrap")))
    cut = margin * factor
    return larger.crop((cut, cut, larger.width - cut, larger.height - cut))
