"""What the dream minimizes: weighted spherical distances from cutouts to the prompts.

Each prompt (text or image) becomes one target vector per guide. A positive weight pulls the
cutouts toward it, a negative one pushes them away; a stop value ends the pull of a prompt once
its (signed) distance is below it, as in the VQGAN+CLIP notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cutouts import CutoutSettings, make_cutouts
from .guides import Guide


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between unit vectors: [N,D] x [M,D] -> [N,M]."""
    chord = (a.unsqueeze(1) - b.unsqueeze(0)).norm(dim=-1).div(2).clamp(max=1.0)
    return chord.arcsin().pow(2).mul(2)


@dataclass
class Target:
    label: str  # the prompt text or image path, for reports
    weight: float
    stop: float
    vectors: list[torch.Tensor]  # one unit vector [D] per guide


def text_targets(guides: list[Guide], prompts) -> list[Target]:
    texts = [p.text for p in prompts]
    per_guide = [guide.embed_texts(texts) for guide in guides]
    return [Target(p.text, p.weight, p.stop, [emb[i] for emb in per_guide]) for i, p in enumerate(prompts)]


@torch.no_grad()
def image_target(guides: list[Guide], label: str, pixels: torch.Tensor, weight: float, stop: float) -> Target:
    vectors = []
    for guide in guides:
        view = F.interpolate(pixels, size=(guide.image_size, guide.image_size), mode="bilinear", antialias=True)
        vectors.append(guide.embed_images(view)[0])
    return Target(label, weight, stop, vectors)


def dream_loss(pixels: torch.Tensor, guides: list[Guide], targets: list[Target], cutouts: CutoutSettings,
               generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """(loss to minimize, score) for one picture; score is the mean cosine to positive prompts."""
    total = pixels.new_zeros(())
    score, positive = 0.0, sum(t.weight for t in targets if t.weight > 0)
    for g, guide in enumerate(guides):
        embeddings = guide.embed_images(make_cutouts(pixels, guide.image_size, cutouts, generator))
        for target in targets:
            vector = target.vectors[g].to(embeddings)
            signed = spherical_distance(embeddings, vector[None])[:, 0] * (1.0 if target.weight >= 0 else -1.0)
            # Past the stop value the prompt keeps its value but no longer pulls.
            pulled = torch.where(signed > target.stop, signed, signed.detach())
            total = total + abs(target.weight) * pulled.mean()
            if target.weight > 0:
                score += target.weight / positive * float((embeddings.detach() @ vector).mean())
    return total / len(guides), score / len(guides)


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels: the smoothness term of the
    VQGAN+CLIP notebooks, which damps the fine grids and speckles CLIP rewards."""
    rows = (pixels[..., 1:, :] - pixels[..., :-1, :]).pow(2).mean()
    cols = (pixels[..., :, 1:] - pixels[..., :, :-1]).pow(2).mean()
    return rows + cols


@torch.no_grad()
def clean_scores(pixels: torch.Tensor, guides: list[Guide], texts: list[str]) -> list[float]:
    """Cosine of the whole picture (no cutouts, no noise) to each text, averaged over guides."""
    totals = torch.zeros(len(texts))
    for guide in guides:
        view = F.interpolate(pixels, size=(guide.image_size, guide.image_size), mode="bilinear", antialias=True)
        totals += (guide.embed_images(view) @ guide.embed_texts(texts).to(view).T)[0].cpu()
    return (totals / len(guides)).tolist()
