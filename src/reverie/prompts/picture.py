"""The prompt of one picture: template -> variant -> (expansion) -> styles -> the prompt encoded.

A request's `prompt` and `negative_prompt` are templates (prompts/templates.py). For each picture:

1. the variant: random mode draws it from the picture's seed (the same seed, the same variant, in
   any batch); combinatorial mode takes combination number ``seed % C`` of the C combinations
   (at most `max_combinations`), so the C consecutive seeds of a request show every combination
   once, and a picture re-made from its seed gets its own combination back. The negative
   template is always drawn from the seed (random mode).
2. with `expand`, the variant enriched by prompt expansion (prompts/expansion.py), drawn from
   the same seed: `expanded`.
3. the style presets, in order, weighted by `stylize` (prompts/styles.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from .expansion import expand_prompt
from .styles import apply_styles, get_styles
from .templates import (capped_combinations, check_template, is_template, random_variant, wildcard_folders,
                        wildcard_manager)

__all__ = ["PicturePrompt", "PromptPlan", "combination_count", "picture_prompt", "prompt_plan"]


@dataclass(frozen=True)
class PicturePrompt:
    """What one picture was made from: the templates, the variants they gave, the prompts encoded."""

    template: str
    variant: str
    prompt: str
    negative_prompt: str
    negative_template: str = ""
    negative_variant: str = ""
    combination: int | None = None  # combinatorial mode: which combination (0-based)
    expanded: str | None = None  # the variant after prompt expansion (`expand`)

    def metadata(self) -> dict:
        """The picture's entry in the PNG's reverie JSON (`prompt`)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


class PromptPlan:
    """The per-picture prompts of one request; equal seeds give equal (cached) answers."""

    def __init__(self, prompt: str, negative_prompt: str = "", styles: tuple[str, ...] = (),
                 stylize: int | None = None, combinatorial: bool = False, max_combinations: int = 32,
                 expand: bool = False):
        self.template, self.negative_template = prompt, negative_prompt
        self.styles, self.stylize = tuple(styles), stylize
        self.combinatorial, self.expand = combinatorial, expand
        self._wildcards = wildcard_manager() if is_template(prompt) or is_template(negative_prompt) else None
        check_template(prompt, "prompt", self._wildcards)
        check_template(negative_prompt, "negative_prompt", self._wildcards)
        get_styles(list(self.styles))  # an unknown style is refused now, before any work
        self.variants: tuple[str, ...] = ()
        self.capped = False
        if combinatorial:
            found = capped_combinations(prompt, max_combinations)
            self.variants, self.capped = found.variants, found.capped
        self._cache: dict[int, PicturePrompt] = {}

    @property
    def count(self) -> int:
        """How many different prompts the template gives in combinatorial mode (1 otherwise)."""
        return len(self.variants) if self.combinatorial else 1

    def __call__(self, seed: int) -> PicturePrompt:
        if seed not in self._cache:
            self._cache[seed] = self._resolve(seed)
        return self._cache[seed]

    def _resolve(self, seed: int) -> PicturePrompt:
        combination = None
        if self.combinatorial:
            combination = seed % len(self.variants)
            variant = self.variants[combination]
        else:
            variant = random_variant(self.template, seed, "prompt", self._wildcards)
        negative_variant = random_variant(self.negative_template, seed, "negative_prompt", self._wildcards)
        expanded = expand_prompt(variant, seed) if self.expand else None
        prompt, negative = apply_styles(list(self.styles), expanded or variant, negative_variant, self.stylize)
        return PicturePrompt(self.template, variant, prompt, negative, self.negative_template, negative_variant,
                             combination, expanded)


def _wildcards_signature() -> tuple:
    """The wildcard files as they are now (names and times), so a cached plan is rebuilt when one changes."""
    files = []
    for folder in wildcard_folders():
        if folder.is_dir():
            for root, _dirs, names in os.walk(folder):
                files += [(os.path.join(root, name), os.stat(os.path.join(root, name)).st_mtime_ns) for name in names]
    return tuple(sorted(files))


@lru_cache(maxsize=32)
def _plan(prompt: str, negative_prompt: str, styles: tuple[str, ...], stylize: int | None, combinatorial: bool,
          max_combinations: int, expand: bool, wildcards: tuple) -> PromptPlan:
    return PromptPlan(prompt, negative_prompt, styles, stylize, combinatorial, max_combinations, expand)


def prompt_plan(request: Any) -> PromptPlan:
    """The plan of a request (or anything with its prompt fields), cached while nothing changes."""
    templates = is_template(request.prompt) or is_template(getattr(request, "negative_prompt", "") or "")
    return _plan(request.prompt, getattr(request, "negative_prompt", "") or "", tuple(getattr(request, "styles", ()) or ()),
                 getattr(request, "stylize", None), bool(getattr(request, "combinatorial", False)),
                 int(getattr(request, "max_combinations", 32)), bool(getattr(request, "expand", False)),
                 _wildcards_signature() if templates else ())


def picture_prompt(request: Any, seed: int) -> PicturePrompt:
    """The prompt of the picture with `seed`: see the module text. The variant depends on the seed
    alone (in combinatorial mode too: combination seed % C), so a picture re-made from its seed,
    alone or in a batch, gets its own."""
    return prompt_plan(request)(seed)


def combination_count(request: Any) -> int:
    """How many pictures one pass of a combinatorial request makes (its capped combinations)."""
    return prompt_plan(request).count
