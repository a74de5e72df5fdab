"""Prompt expansion: a short prompt enriched with words the built-in model knows, as Fooocus and
MagicPrompt do, offline and reproducibly.

`expand_prompt(prompt, seed)` keeps the user's prompt first and unchanged and appends, after a
comma, at most `MAX_ADDED_WORDS` words:

- one style the built-in model learned ("Noto emoji", "Twemoji", "flat Fluent emoji",
  "line icon"), drawn by how often the prompt's words come in emoji or in line icons, unless the
  prompt names a style or medium itself;
- half the time, a related word: a tag that comes with the prompt's words in the emojibase
  labels and tags of the training concepts (fitted tables in `expansion.json`, built by
  `python -m reverie.training.expansion` from the pinned npm data);
- one or two descriptive modifiers written by the project (detail, lighting, colour,
  composition, background, medium), each group at most once.

The related word and the modifiers carry attention weight ADDED_WEIGHT ("(soft lighting:0.4)"),
since reverie-mini never learned them. Measured on reverie-mini (benchmarks/prompt_expansion.py,
docs/prompt-craft.md), the built-in judge still scores expanded prompts' pictures below the
short prompt's, the style word alone included: on that model expansion gives variety, not a
better score.

Nothing added contradicts the prompt: no colour word is ever added (so a named colour is never
changed), a prompt that names a colour gets no colour scheme, background or black-outline style,
and a prompt that names a style or medium gets no other one. Every choice comes from a SHA-256
counter over (seed, prompt): the same prompt and seed give the same words on any machine and
Python version (no `hash()`, no `random` module); another seed usually gives others.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

TABLES = Path(__file__).with_name("expansion.json")
MAX_ADDED_WORDS = 12
# Attention weight of the related words and the modifiers, which reverie-mini never learned. At
# full weight each one pulled its pictures further from the prompt (benchmarks/prompt_expansion.py,
# docs/prompt-craft.md); at 0.4 they still do, on that model.
ADDED_WEIGHT = 0.4
MAX_RELATED = 1  # related words drawn at most (none or one, half the time each, when the prompt has any)

EMOJI_STYLES = ("Noto emoji", "Twemoji", "flat Fluent emoji")
ICON_STYLE = "line icon"

# Never added, and when the prompt names one, it decides the colours.
COLOURS = frozenset({
    "red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black", "white", "grey",
    "gray", "gold", "golden", "silver", "cyan", "teal", "magenta", "beige", "navy", "turquoise", "indigo",
    "maroon", "crimson", "scarlet", "lime", "olive", "amber", "ivory", "cream", "tan", "bronze", "copper",
    "lavender", "lilac", "peach", "coral", "aqua", "azure", "emerald", "ruby", "rose", "blond", "blonde",
})
# Words that say how the picture is drawn: a prompt with one of them gets no style or medium added.
STYLE_WORDS = frozenset({
    "emoji", "emojis", "icon", "icons", "noto", "twemoji", "fluent", "outline", "style", "art", "painting",
    "painted", "watercolour", "watercolor", "oil", "sketch", "drawing", "drawn", "pencil", "ink", "photo",
    "photograph", "photographic", "pixel", "pixels", "cartoon", "anime", "illustration", "vector", "3d", "render",
    "clay", "synthwave", "cyberpunk", "steampunk", "ukiyo", "baroque", "pastel", "neon", "sticker", "logo",
    "realistic", "isometric", "lowpoly", "poly", "mosaic", "stained", "graffiti", "comic",
})

# The project's own descriptive modifiers, by group. A group is used at most once; `colour`,
# `background` are skipped when the prompt names a colour, `medium` when it names a style.
MODIFIERS: dict[str, tuple[str, ...]] = {
    "detail": ("clean lines", "simple shapes", "crisp edges", "smooth shading", "fine detail", "neat outline",
               "minimal detail", "sharp focus"),
    "lighting": ("soft lighting", "soft shadow", "bright light", "glossy highlight", "even lighting", "studio lighting"),
    "colour": ("vibrant colours", "bright colours", "bold colours", "flat colours", "rich colours", "cheerful colours"),
    "composition": ("centered", "single object", "front view", "symmetrical", "close-up", "full view"),
    "background": ("on a white background", "plain white background"),
    "medium": ("vector art", "flat illustration", "digital art", "emoji art", "sticker", "app icon"),
}
_COLOUR_GROUPS = ("colour", "background")
# The line icon style is drawn in black outline: it would contradict a named colour.

_STOPWORDS = frozenset({
    "a", "an", "the", "of", "and", "or", "with", "without", "in", "on", "at", "to", "for", "by", "from", "as", "is",
    "it", "its", "this", "that", "some", "very", "into", "over", "under", "up", "down", "out", "no", "not",
})
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=1)
def tables() -> dict:
    """The fitted tables (loaded once): `related` word -> [[tag, weight], ...], `styles` word -> [emoji, icon]."""
    return json.loads(TABLES.read_text(encoding="utf-8"))


class _Draws:
    """Integers drawn from SHA-256 over (seed, prompt, counter): the same on every machine."""

    def __init__(self, prompt: str, seed: int):
        self._key = f"reverie-expansion/1\x00{int(seed)}\x00{prompt}".encode("utf-8")
        self._count = 0

    def below(self, n: int) -> int:
        digest = hashlib.sha256(self._key + b"\x00" + str(self._count).encode("ascii")).digest()
        self._count += 1
        return int.from_bytes(digest[:8], "big") % n

    def weighted(self, weights: list[int]) -> int:
        """An index drawn with probability proportional to its integer weight."""
        point = self.below(sum(weights))
        for i, weight in enumerate(weights):
            if point < weight:
                return i
            point -= weight
        raise AssertionError("unreachable")  # pragma: no cover


def words_of(text: str) -> list[str]:
    """Lowercase words and numbers, in order ("Red apple, (shiny:1.2)" -> red, apple, shiny, 1, 2)."""
    return _WORD.findall(text.lower())


def _known(word: str, related: dict) -> str:
    """The word as the tables know it: plurals tried without their 's' or 'es'."""
    if word in related:
        return word
    for cut in ("es", "s"):
        if word.endswith(cut) and word[: -len(cut)] in related:
            return word[: -len(cut)]
    return word


def _related_pool(words: list[str], data: dict, exclude: set[str]) -> tuple[list[str], list[int]]:
    """Tags related to the prompt's words, with integer weights summed over the words.

    A word counts less the more concepts it comes in ("face" says less than "tiger"); colour
    words are not asked (their tags are other things of that colour).
    """
    pool: dict[str, int] = {}
    for word in words:
        if word in COLOURS:
            continue
        spread = math.isqrt(100 * max(1, sum(data["styles"].get(word, (1, 0)))))
        for tag, weight in data["related"].get(word, ()):
            if tag not in exclude and tag not in COLOURS:
                pool[tag] = pool.get(tag, 0) + weight * 1000 // spread
    ranked = sorted(pool.items(), key=lambda item: (-item[1], item[0]))
    return [tag for tag, _ in ranked], [weight for _, weight in ranked]


def _style(words: list[str], styles: dict, draws: _Draws, coloured: bool) -> str:
    """A learned style, drawn by how often the prompt's words come in emoji and in line icons.

    The counts are squared, so a prompt whose words are nearly all icons ("alert hexagon") gets
    the line icon nearly always; words the tables do not know lean to emoji (3 to 1).
    """
    emoji = icon = 0
    for word in words:
        e, i = styles.get(word, (0, 0))
        emoji, icon = emoji + e, icon + i
    if emoji + icon == 0:
        emoji, icon = 3, 1
    if coloured:
        icon = 0  # line icons are drawn in black
    weights = [emoji * emoji] * len(EMOJI_STYLES) + [len(EMOJI_STYLES) * icon * icon]
    return [*EMOJI_STYLES, ICON_STYLE][draws.weighted(weights)]


def expansion_parts(prompt: str, seed: int) -> list[tuple[str, str]]:
    """What `expand_prompt` would add, in order, as (kind, words): kind is "related", "style" or a
    modifier group ("detail", "lighting", ...). Empty for an empty prompt."""
    if not prompt.strip():
        return []
    data = tables()
    draws = _Draws(prompt, seed)
    raw = words_of(prompt)
    words = [_known(w, data["related"]) for w in raw if w not in _STOPWORDS]
    present = set(raw) | set(words)
    coloured = bool(present & COLOURS)
    styled = bool(present & STYLE_WORDS) or bool(re.search(r"\bline (art|drawing)\b", prompt.lower()))

    parts: list[tuple[str, str]] = []
    if not styled:  # first, as in the training captions' "<label>, <style>"
        parts.append(("style", _style(words, data["styles"], draws, coloured)))
    tags, weights = _related_pool(words, data, present | _STOPWORDS)
    if tags:
        tags, weights = tags[:5], weights[:5]  # the closest few
        for _ in range(draws.below(min(MAX_RELATED, len(tags)) + 1)):
            i = draws.weighted(weights)
            parts.append(("related", f"({tags.pop(i)}:{ADDED_WEIGHT})"))
            weights.pop(i)
    groups = [g for g in MODIFIERS if not (coloured and g in _COLOUR_GROUPS) and not (styled and g == "medium")]
    for _ in range(1 + draws.below(2)):
        group = groups.pop(draws.below(len(groups)))
        phrases = MODIFIERS[group]
        parts.append((group, f"({phrases[draws.below(len(phrases))]}:{ADDED_WEIGHT})"))
    return parts


def expand_prompt(prompt: str, seed: int) -> str:
    """`prompt` followed by up to MAX_ADDED_WORDS words drawn for `seed`; an empty prompt stays as it is."""
    return append_parts(prompt, [words for _, words in expansion_parts(prompt, seed)])


def append_parts(prompt: str, parts: Iterable[str]) -> str:
    """The prompt, then the parts after commas, as many whole parts as fit in MAX_ADDED_WORDS words."""
    kept, count = [], 0
    for part in parts:
        n = len(part.split())
        if count + n > MAX_ADDED_WORDS:
            break
        kept.append(part)
        count += n
    if not kept:
        return prompt
    head = prompt.rstrip()  # trailing spaces are not words
    return head + (" " if head.endswith(",") else ", ") + ", ".join(kept)
