"""A trained style network (Johnson et al.) applied to a picture: one pass, no optimisation."""

from __future__ import annotations

import torch
from PIL import Image

from ...models.cache import ModelCache
from ...models.style_network import StyleNetwork, load_style_network, resolve_style_network
from ...pixels import to_picture, to_tensor
from .colour import keep_colours


def style_network(models: ModelCache, reference: str, device: torch.device) -> StyleNetwork:
    """The network `reference` names (a listed name or a run folder), loaded once per device."""
    folder = resolve_style_network(reference)
    return models.get(("style-network", str(folder.resolve()), str(device)), lambda: load_style_network(folder).to(device))


@torch.no_grad()
def apply_style_network(network: StyleNetwork, content: Image.Image, preserve_colour: bool = False) -> Image.Image:
    """`content` (RGB, at the size wanted) painted by `network`."""
    device = next(network.parameters()).device
    pixels = to_tensor(content).to(device)
    styled = network(pixels).clamp(0, 1)
    return to_picture(keep_colours(styled, pixels) if preserve_colour else styled)
