"""Style presets: named prompt templates kept as data (styles.json), applied before generation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import BadRequest, ReverieError

STYLES_FILE = Path(__file__).with_name("styles.json")
PREVIEWS_DIR = Path(__file__).with_name("previews")
SETTINGS = {"cfg_scale": (int, float), "steps": (int,), "sampler": (str,)}  # request fields a preset may set


class StyleFileError(ReverieError):
    """A styles file that does not follow the schema; the message names the entry and the field."""


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str  # contains {prompt}
    negative: str = ""
    settings: dict = field(default_factory=dict)  # request fields used where the request leaves them unset
    preview: str | None = None  # a picture's file name in PREVIEWS_DIR


def parse_styles(data: object, source: str = "styles.json") -> tuple[Style, ...]:
    """The presets of a styles document ({"styles": [entry, ...]}), or a StyleFileError naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("styles"), list):
        raise StyleFileError(f"{source}: expected an object with a \"styles\" list")
    styles, seen = [], set()
    for i, entry in enumerate(data["styles"]):
        where = f"{source}: styles[{i}]"
        if not isinstance(entry, dict):
            raise StyleFileError(f"{where}: expected an object with name, prompt and negative")
        if isinstance(entry.get("name"), str) and entry["name"].strip():
            where = f"{where} ({entry['name']!r})"
        unknown = sorted(set(entry) - {"name", "prompt", "negative", "settings", "preview"})
        if unknown:
            raise StyleFileError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: name, prompt, negative, settings, preview")
        for key in ("name", "prompt"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise StyleFileError(f"{where}: \"{key}\" must be a non-empty string")
        if "{prompt}" not in entry["prompt"]:
            raise StyleFileError(f"{where}: \"prompt\" must contain {{prompt}}, where the user's prompt goes")
        if not isinstance(entry.get("negative", ""), str):
            raise StyleFileError(f"{where}: \"negative\" must be a string")
        settings = entry.get("settings", {})
        if not isinstance(settings, dict):
            raise StyleFileError(f"{where}: \"settings\" must be an object")
        for key, value in settings.items():
            if key not in SETTINGS:
                raise StyleFileError(f"{where}: setting {key!r} is not one a preset may set; allowed: {', '.join(SETTINGS)}")
            if not isinstance(value, SETTINGS[key]) or isinstance(value, bool):
                raise StyleFileError(f"{where}: setting {key!r} has the wrong type ({type(value).__name__})")
        preview = entry.get("preview")
        if preview is not None and (not isinstance(preview, str) or Path(preview).name != preview or not preview):
            raise StyleFileError(f"{where}: \"preview\" must be a file name (no folders)")
        if entry["name"].lower() in seen:
            raise StyleFileError(f"{where}: the name {entry['name']!r} is used twice (names are compared without case)")
        seen.add(entry["name"].lower())
        styles.append(Style(entry["name"], entry["prompt"], entry.get("negative", ""), dict(settings), preview))
    return tuple(styles)


@lru_cache(maxsize=1)
def load_styles() -> tuple[Style, ...]:
    try:
        data = json.loads(STYLES_FILE.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StyleFileError(f"{STYLES_FILE.name}: not valid JSON: {exc}") from None
    return parse_styles(data, STYLES_FILE.name)


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
