"""A latent diffusion model's latent->RGB linear map, for cheap live previews: fitted once per
autoencoder by encoding a few plain-colour swatches through it (methods/diffusion/preview.py
draws with it; models/mini_bundle.py keeps reverie-mini's beside its export)."""

from __future__ import annotations

import itertools
import weakref

import torch

# Per autoencoder, forgotten with it (an id() key could be reused by a later model).
_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
SWATCH = 64


@torch.no_grad()
def fit_latent_to_rgb(vae) -> torch.Tensor:
    """[C+1, 3]: latent channels (plus a bias) -> RGB in [0, 1], least squares over colour swatches."""
    if vae not in _FITTED:
        levels = (0.0, 0.5, 1.0)
        colours = torch.tensor(list(itertools.product(levels, levels, levels)), dtype=torch.float32)
        swatches = colours.view(-1, 3, 1, 1).expand(-1, 3, SWATCH, SWATCH)
        parameter = next(vae.parameters())
        encoded = vae.encode((swatches * 2 - 1).to(parameter.device, parameter.dtype))
        latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        features = latents.float().mean(dim=(2, 3)).cpu() * scaling  # the pipeline's latents are scaled
        design = torch.cat([features, torch.ones(len(features), 1)], dim=1)
        _FITTED[vae] = torch.linalg.lstsq(design, colours).solution
    return _FITTED[vae]
