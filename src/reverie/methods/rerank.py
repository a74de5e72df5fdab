"""Scoring pictures against their prompt with a CLIP, and keeping the best of many (as DALL-E did).

The scorer is `mini` (the built-in small CLIP's judge, always there) or anything dreaming
takes as a guide (a trained CLIP folder, a CLIP file). A picture's score is the cosine between
its embedding and the prompt's, with the prompt's attention syntax (weights, brackets, BREAK)
taken out first, since a CLIP reads plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.cache import ModelCache
from ..pixels import to_tensor
from ..progress import Interrupted, ProgressCallback, ProgressEvent
from ..prompts.syntax import Fragment, parse_prompt
from .dreaming.guides import BUILTIN_GUIDE, Guide, MiniClipGuide, load_guide


def plain_prompt(prompt: str) -> str:
    """The words of a prompt without its attention syntax: "(red:1.3) [apple]" -> "red apple"."""
    words = "".join(piece.text if isinstance(piece, Fragment) else " " for piece in parse_prompt(prompt))
    return " ".join(words.split())


def _as_pixels(pictures: list[Image.Image], size: int) -> torch.Tensor:
    """Centre square crops at `size`, float [N, 3, size, size] in [0, 1]."""
    crops = []
    for picture in pictures:
        side = min(picture.size)
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        pixels = to_tensor(picture.crop((left, top, left + side, top + side)))
        crops.append(F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops)


class Scorer:
    """How well pictures match a prompt, by one guide: `scores(pictures, prompt)` -> cosines."""

    def __init__(self, guide: Guide):
        self.guide = guide
        self.name = guide.name
        self._texts: dict[str, torch.Tensor] = {}  # prompts' embeddings: batches share them

    @classmethod
    def load(cls, reference: str) -> "Scorer":
        """`mini` is the built-in CLIP's judge (not its dreaming guide); anything else loads as dreaming loads it."""
        if reference == BUILTIN_GUIDE:
            from ..models.mini_clip import load_clip

            return cls(MiniClipGuide(load_clip(), name=BUILTIN_GUIDE))
        return cls(load_guide(reference))

    @torch.no_grad()
    def scores(self, pictures: list[Image.Image], prompt: str | list[str]) -> list[float]:
        """Each picture's cosine to the plain words of `prompt`, or of its own prompt (a list, one
        per picture: pictures of a template each have their own)."""
        if not pictures:
            return []
        prompts = [prompt] * len(pictures) if isinstance(prompt, str) else list(prompt)
        for text in dict.fromkeys(prompts):
            if text not in self._texts:
                if len(self._texts) > 256:
                    self._texts.clear()
                self._texts[text] = self.guide.embed_texts([plain_prompt(text) or text])[0]
        unique = list(dict.fromkeys(prompts))
        texts = torch.stack([self._texts[text] for text in unique])
        images = self.guide.embed_images(_as_pixels(pictures, self.guide.image_size))
        cosines = images.float() @ texts.float().T.to(images.device)
        return [cosines[row, unique.index(text)].item() for row, text in enumerate(prompts)]


def scorer_from(models: ModelCache, reference: str = BUILTIN_GUIDE) -> Scorer:
    """The scorer `reference` names, loaded once into the shared model cache."""
    return models.get(("scorer", reference), lambda: Scorer.load(reference))


@dataclass
class Candidate:
    picture: Image.Image
    seed: int
    score: float


def best_candidates(batches: Iterable[list[tuple[Image.Image, int]]], scorer: Scorer, prompt: str | Callable[[int], str],
                    keep: int, total: int, progress: ProgressCallback) -> tuple[list[Candidate], bool]:
    """Score every candidate as its batch finishes, against `prompt` or `prompt(seed)` (its own
    prompt); return the `keep` best, best first.

    Stopped early (Ctrl-C, a cancelled job), it keeps the best of the candidates finished so
    far and says so with the second value.
    """
    finished: list[Candidate] = []
    interrupted = False
    try:
        for batch in batches:
            pictures = [picture for picture, _ in batch]
            scores = scorer.scores(pictures, [prompt(seed) for _, seed in batch] if callable(prompt) else prompt)
            finished += [Candidate(picture, seed, score) for (picture, seed), score in zip(batch, scores)]
            progress(ProgressEvent("rerank", len(finished), total, message=f"scored {len(finished)}/{total} candidates"))
    except (Interrupted, KeyboardInterrupt):
        interrupted = True
    ranked = sorted(finished, key=lambda candidate: candidate.score, reverse=True)
    return ranked[:keep], interrupted


def with_scores(batch, scorer, plan) -> list[tuple]:
    """[(picture, seed)] -> [(picture, seed, score)], each scored against its own prompt
    (`plan(seed).prompt`, a PromptPlan); the score is None when nothing scores."""
    if scorer is None:
        return [(picture, seed, None) for picture, seed in batch]
    scores = scorer.scores([picture for picture, _ in batch], [plan(seed).prompt for _, seed in batch])
    return [(picture, seed, score) for (picture, seed), score in zip(batch, scores)]
