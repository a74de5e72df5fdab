"""Dream prompts in the VQGAN+CLIP notebook syntax.

`a cozy cabin | oil painting:0.5 | blurry:-0.5` is three prompts. Each part is
`text[:weight[:stop]]`: the weight scales its pull (negative pushes away), and the optional stop
is a distance past which that prompt stops pulling. A part whose words repeat (function words aside) is
read as a bag of words weighted by count, as The Big Sleep's users wrote them: "football
football galaxy guitar" weighs football 2, galaxy 1, guitar 1. Image prompts use the same `path[:weight[:stop]]` form.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...errors import PromptSyntaxError

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class DreamPrompt:
    """One thing to steer toward (weight > 0) or away from (weight < 0)."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf


def _split_weight(part: str, source: str, offset: int) -> tuple[str, float, float]:
    """`text:w:stop` -> (text, w, stop); trailing fields that are not numbers belong to the text."""
    fields = part.rsplit(":", 2)
    numbers: list[float] = []
    while len(fields) > 1 and _NUMBER.match(fields[-1].strip()) and len(numbers) < 2:
        numbers.insert(0, float(fields.pop().strip()))
    text = ":".join(fields).strip()
    if not text:
        raise PromptSyntaxError(source, offset, "a prompt part has a weight but no text before it")
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else -math.inf
    if not math.isfinite(weight):
        raise PromptSyntaxError(source, offset, "the weight must be a finite number")
    return text, weight, stop


# Function words repeat in ordinary sentences ("a cat on a mat"); only other words count as repeats.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with and or but as is are be into onto over under near its it this that".split()
)


def _bag_of_words(text: str, weight: float, stop: float) -> list[DreamPrompt]:
    words = [w.lower() for w in text.split() if w.lower() not in FUNCTION_WORDS]
    counts = Counter(words)
    if not counts or max(counts.values()) < 2:
        return [DreamPrompt(text, weight, stop)]
    return [DreamPrompt(word, weight * counts[word], stop) for word in dict.fromkeys(words)]


def parse_dream_prompt(source: str) -> list[DreamPrompt]:
    """Parse `text:weight:stop | ...` into prompts; raises PromptSyntaxError naming the position."""
    prompts: list[DreamPrompt] = []
    offset = 0
    for part in source.split("|"):
        if part.strip():
            text, weight, stop = _split_weight(part, source, offset + len(part) - len(part.lstrip()))
            prompts.extend(_bag_of_words(text, weight, stop))
        elif source.strip():
            raise PromptSyntaxError(source, offset, "empty prompt between '|' separators")
        offset += len(part) + 1
    if not any(p.weight > 0 for p in prompts):
        raise PromptSyntaxError(source, 0, "give at least one prompt with a positive weight to dream toward")
    return prompts


def format_dream_prompt(prompts: list[DreamPrompt]) -> str:
    """Prompts back in the `text:weight[:stop] | ...` syntax, so that `parse_dream_prompt` reads
    them as they are (a text never ends in `:number` without a stop after it; see `_split_weight`)."""
    parts = []
    for prompt in prompts:
        stop = "" if prompt.stop == -math.inf else f":{prompt.stop:.6g}"
        parts.append(f"{prompt.text}:{prompt.weight:.6g}{stop}")
    return " | ".join(parts)


def parse_image_prompt(reference: str) -> tuple[Path, float, float]:
    """`path[:weight[:stop]]` -> (path, weight, stop)."""
    text, weight, stop = _split_weight(reference, reference, 0)
    return Path(text), weight, stop
