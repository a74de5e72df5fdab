"""Style presets: named prompt templates kept as data (styles.json), applied before generation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import BadRequest

STYLES_FILE = Path(__file__).with_name("styles.json")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str  # contains {prompt}
    negative: str = ""


@lru_cache(maxsize=1)
def load_styles() -> tuple[Style, ...]:
    data = json.loads(STYLES_FILE.read_text())
    return tuple(Style(**entry) for entry in data["styles"])


def get_style(name: str) -> Style:
    for style in load_styles():
        if style.name.lower() == name.lower():
            return style
    raise BadRequest("style", f"unknown style {name!r}; choose one of: {', '.join(s.name for s in load_styles())}")


def apply_style(name: str | None, prompt: str, negative: str = "") -> tuple[str, str]:
    """(prompt, negative) with the style's template and negative words added."""
    if not name:
        return prompt, negative
    style = get_style(name)
    styled = style.prompt.replace("{prompt}", prompt)
    negatives = ", ".join(part for part in (negative, style.negative) if part)
    return styled, negatives
