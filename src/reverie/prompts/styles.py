"""Style presets: named prompt templates kept as data (styles.json), combinable, weighted by stylize.

A preset is `{"name", "prompt": "... {prompt} ...", "negative", "settings": {cfg_scale, steps,
sampler}, "preview"}`. Presets apply in order, each around the result of the ones before it
(`--style A --style B`: B's `{prompt}` receives A's styled prompt); their negatives are joined
after the request's own. A preset's `settings` fill request fields the request left unset; where
two presets set the same field the later one wins.

`stylize` (0..1000, None = 100) weights the words a preset adds with A1111's attention syntax,
which prompts/syntax.py parses: the added words become ``(words:w)`` with

    w = (stylize / 100) ** 0.2        (0 -> the words are dropped, 100 -> 1: left as written,
                                        250 -> 1.2, 500 -> 1.38, 1000 -> 1.58 at most)

so 100 gives exactly the preset's text and the pull grows slowly, staying in the range of
weights SD models take well. Without a preset, stylize moves the CFG scale instead (see
`stylized_cfg`): more stylize, less guidance, so more of the model's own taste.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import BadRequest, ReverieError

STYLES_FILE = Path(__file__).with_name("styles.json")
NEUTRAL_STYLIZE = 100
STYLIZE_EXPONENT = 0.2
# The trimmed separators left outside a weighted group: "(an oil painting of:1.2) apple, (gallery lighting:1.2)".
_EDGES = re.compile(r"^([\s,.;]*)(.*?)([\s,.;]*)$", re.S)
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

    def apply(self, prompt: str, weight: float = 1.0) -> str:
        """This preset's template around `prompt`, its own words weighted by `weight`."""
        before, _, after = self.prompt.partition("{prompt}")  # parse_styles made sure it is there
        return weighted_words(before, weight) + prompt + weighted_words(after, weight)


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


def style_names() -> list[str]:
    return [style.name for style in load_styles()]


def get_style(name: str) -> Style:
    for style in load_styles():
        if style.name.lower() == name.strip().lower():
            return style
    names = style_names()
    close = difflib.get_close_matches(name[:100], names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = name if len(name) <= 60 else name[:60] + "..."
    raise BadRequest("styles", f"unknown style {shown!r}; {hint}`reverie styles` lists all {len(names)}, "
                               f"e.g. {', '.join(names[1:7])}")


def get_styles(names: list[str]) -> list[Style]:
    """The presets `names` names, in order ("None" and empty names are no preset)."""
    return [get_style(name) for name in names if name and name.strip().lower() != "none"]


def style_weight(stylize: int | None) -> float:
    """The attention weight of a preset's words for `stylize` (None: neutral, 1)."""
    stylize = NEUTRAL_STYLIZE if stylize is None else stylize
    return round((stylize / NEUTRAL_STYLIZE) ** STYLIZE_EXPONENT, 2)


def weighted_words(text: str, weight: float) -> str:
    """`text` with its words wrapped as ``(words:weight)``, the separators around them kept;
    weight 1 leaves it exactly as written, weight 0 keeps only a separator."""
    if weight == 1.0 or not text.strip():
        return text
    lead, words, trail = _EDGES.match(text).groups()
    if weight <= 0 or not words:
        return ", " if lead.strip() or trail.strip() else (" " if text else "")
    return f"{lead}({words}:{weight:g}){trail}"


def apply_styles(names: list[str], prompt: str, negative: str = "", stylize: int | None = None) -> tuple[str, str]:
    """(prompt, negative) with the presets applied in order, their words weighted by `stylize`."""
    styles = get_styles(names)
    weight = style_weight(stylize)
    for style in styles:
        prompt = style.apply(prompt, weight)
    if weight > 0:
        negatives = [weighted_words(style.negative, weight) for style in styles if style.negative]
        negative = ", ".join(part for part in (negative, *negatives) if part)
    return (_tidy(prompt) if weight <= 0 and styles else prompt), negative


def style_settings(names: list[str]) -> dict:
    """The request fields the presets set (`settings`), the later preset winning."""
    settings: dict = {}
    for style in get_styles(names):
        settings |= {key: value for key, value in style.settings.items() if key in SETTINGS}
    return settings


def stylized_cfg(cfg_scale: float, stylize: int | None, has_styles: bool) -> float:
    """The CFG scale a request with `stylize` and no preset guides with: stylize pulls toward the
    model's own taste by lowering the guidance above 1,

        cfg' = 1 + (cfg - 1) / max(w, 0.5),   w = (stylize / 100) ** 0.2

    (stylize 100: unchanged; 1000: (cfg - 1) / 1.58; 0: twice the guidance above 1, the prompt
    followed as closely as the model can). With a preset, stylize weights its words instead."""
    if has_styles or stylize is None or stylize == NEUTRAL_STYLIZE or cfg_scale <= 1:
        return cfg_scale
    weight = max(style_weight(stylize), 0.5)
    return round(min(50.0, 1 + (cfg_scale - 1) / weight), 3)


def _tidy(prompt: str) -> str:
    """Separators left by dropped words ("apple, , x", ", apple") cleaned up."""
    prompt = re.sub(r"(\s*,\s*)+,", ",", prompt)
    return prompt.strip().strip(",").strip()
