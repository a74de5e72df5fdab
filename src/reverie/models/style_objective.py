"""The style-transfer loss, shared by the optimisation (Gatys et al.) and the training of
feed-forward style networks (Johnson et al.).

content: squared error of one deep layer's activations; style: squared error of Gram matrices
at several layers; smoothness: total variation. Each term is relative to its target's own size
(||x - t||^2 / ||t||^2), so that a layer's scale, a network's scale and the picture size do not
change what a weight means: strength 1 weighs style as much as content.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .style_features import FeatureNetwork, gram

EPS = 1e-12


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample: ||x - target||^2 / ||target||^2 over everything but the batch dimension."""
    return (x - target).flatten(1).pow(2).sum(1) / target.flatten(1).pow(2).sum(1).clamp_min(EPS)


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Per sample: the mean absolute difference between neighbouring pixels."""
    dy = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (pixels[..., :, 1:] - pixels[..., :, :-1]).abs().flatten(1).mean(1)
    return dx + dy


@dataclass
class StyleTargets:
    """The Gram matrices of the style pictures (one list of layers per style) and their weights (summing to 1)."""

    grams: list[list[torch.Tensor]]
    weights: list[float]

    @classmethod
    def of(cls, network: FeatureNetwork, pictures: list[torch.Tensor], weights: list[float]) -> StyleTargets:
        """`pictures`: one [1, 3, H, W] tensor in [0, 1] per style (sizes may differ)."""
        total = float(sum(weights))
        with torch.no_grad():
            grams = [[gram(a) for a in network.features(p)[0]] for p in pictures]
        return cls(grams, [w / total for w in weights])

    def loss(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """Per sample: the weighted sum over styles of the mean over layers of each Gram's relative error."""
        current = [gram(a) for a in activations]
        per_style = [torch.stack([relative_error(g, t.expand_as(g)) for g, t in zip(current, targets)]).mean(0)
                     for targets in self.grams]
        return sum(w * loss for w, loss in zip(self.weights, per_style))


def style_transfer_loss(network: FeatureNetwork, pixels: torch.Tensor, content: torch.Tensor | None,
                        styles: StyleTargets, strength: float, smoothness: float) -> tuple[torch.Tensor, dict]:
    """(loss averaged over the batch, {"content", "style", "tv"} as floats) for `pixels` [N, 3, H, W]
    in [0, 1]; `content` holds the content pictures' activations at the content layer (None: no
    content term, pure texture)."""
    style_acts, content_acts = network.features(pixels)
    style = styles.loss(style_acts)
    content_term = relative_error(content_acts, content) if content is not None else torch.zeros_like(style)
    tv = total_variation(pixels)
    loss = (content_term + strength * style + smoothness * tv).mean()
    return loss, {"content": float(content_term.detach().mean()), "style": float(style.detach().mean()), "tv": float(tv.detach().mean())}
