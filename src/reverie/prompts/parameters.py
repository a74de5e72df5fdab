"""Midjourney's parameters typed after a prompt: `a castle --ar 16:9 --no people, cars --seed 7`.

The rule for reading them:

* The prompt's text runs up to the first parameter: `--name` (or `—name`, the dash phones
  autocorrect `--` into) at the start of the prompt or after a space, `name` starting with a
  letter. Names are read case-insensitively; `--` before anything else (`--5`, `a--b`) is text.
* A parameter's value runs up to the next parameter, so values may hold spaces and commas
  (`--no red cars, trees`, `--style Dark Fantasy`). As in Midjourney, parameters go at the end:
  words after them are read as the last one's value (and refused where a value does not fit).
* Unknown names and malformed values are a `BadRequest` on the field `prompt` that names the
  parameter and says what to write.

`split_parameters` reads them; `apply_parameters` turns request fields whose prompt carries them
into fields with the clean prompt and the settings they stand for (the request model runs it before
validation, so every front door gets it). A typed parameter is the user's latest word: it wins
over a field that sets the same thing (`--no` and `--style` add to theirs rather than replace).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import BadRequest
from ..request import MAX_SEED

MAX_ASPECT = 8  # the longer side at most this many times the shorter (`--ar 8:1` .. `--ar 1:8`)

_START = re.compile(r"(?:^|(?<=\s))(?:--|\u2014)([A-Za-z][A-Za-z0-9_-]*)")
_RATIO = re.compile(r"(\d+)\s*:\s*(\d+)")


@dataclass(frozen=True)
class Parameter:
    """One parameter: its name, the other spellings, how its value is read (`read` raises
    ValueError saying what to write) and whether it may be given more than once."""

    name: str
    aliases: tuple[str, ...]
    read: Callable[[str], Any]
    repeatable: bool = False


def _integer(low: int, high: int, what: str) -> Callable[[str], int]:
    def read(value: str) -> int:
        if not re.fullmatch(r"\d+", value) or not low <= int(value) <= high:
            raise ValueError(f"takes a whole number from {low} to {high} ({what})")
        return int(value)

    return read


def _words(what: str) -> Callable[[str], str]:
    def read(value: str) -> str:
        if not value:
            raise ValueError(f"takes {what}")
        return value

    return read


def _flag(value: str) -> bool:
    if value:
        raise ValueError("takes no value; write it alone (put words of the prompt before the parameters)")
    return True


def aspect_ratio(value: str) -> tuple[int, int]:
    """"W:H" -> (W, H); ValueError saying what to write when it is not a ratio we can draw."""
    match = _RATIO.fullmatch(value.strip())
    width, height = (int(match[1]), int(match[2])) if match else (0, 0)
    if not width or not height:
        raise ValueError("takes a width:height ratio of whole numbers, such as 16:9, 2:3 or 1:1")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ValueError(f"takes a ratio between 1:{MAX_ASPECT} and {MAX_ASPECT}:1")
    return width, height


def _ratio(value: str) -> str:
    width, height = aspect_ratio(value)
    return f"{width}:{height}"


# name -> (other spellings, reader, repeatable); the request field each sets is in `apply_parameters`.
PARAMETERS = (
    Parameter("no", (), _words("what the picture should not show, such as --no cars, trees"), repeatable=True),
    Parameter("ar", ("aspect",), _ratio),
    Parameter("seed", (), _integer(0, MAX_SEED, "the first picture's seed")),
    Parameter("chaos", ("c",), _integer(0, 100, "how different the pictures are")),
    Parameter("stylize", ("s",), _integer(0, 1000, "how strongly the style pulls")),
    Parameter("tile", (), _flag),
    Parameter("video", (), _flag),
    Parameter("repeat", ("r",), _integer(1, 40, "how many times to run the prompt")),
    Parameter("style", (), _words("a style name, such as --style Watercolour"), repeatable=True),
)
_BY_NAME = {spelling: p for p in PARAMETERS for spelling in (p.name, *p.aliases)}


@dataclass(frozen=True)
class PromptParameters:
    """A prompt split: its text and the parameters typed after it (canonical name -> value;
    a list for the repeatable ones), in the order first given."""

    text: str
    values: dict


def split_parameters(prompt: str) -> PromptParameters:
    """The prompt's text and its parameters; BadRequest("prompt", ...) naming a wrong one."""
    starts = list(_START.finditer(prompt))
    if not starts:
        return PromptParameters(prompt, {})
    values: dict = {}
    for match, following in zip(starts, starts[1:] + [None]):
        typed = match.group(0)
        parameter = _BY_NAME.get(match[1].lower())
        if parameter is None:
            known = ", ".join(f"--{p.name}" for p in PARAMETERS)
            raise BadRequest("prompt", f"unknown parameter {typed}; the parameters are {known} (parameters go at the end "
                                       "of the prompt)")
        raw = prompt[match.end() : following.start() if following else len(prompt)].strip()
        try:
            value = parameter.read(raw)
        except ValueError as exc:
            got = f" (got {raw!r})" if raw else ""
            raise BadRequest("prompt", f"{typed} {exc}{got}") from None
        if parameter.repeatable:
            values.setdefault(parameter.name, []).append(value)
        elif parameter.name in values:
            raise BadRequest("prompt", f"{typed} is given twice; give it once")
        else:
            values[parameter.name] = value
    return PromptParameters(prompt[: starts[0].start()].strip(), values)


def apply_parameters(fields: dict) -> dict:
    """Request fields with the parameters typed in `fields["prompt"]` taken out and applied:
    `--no` appended to negative_prompt, `--seed` -> seed, `--repeat` -> n_iter, `--style` appended
    to styles, `--stylize` -> stylize, `--chaos` -> chaos, `--tile` -> tile, `--video` ->
    progress_video, `--ar` ->
    aspect_ratio (clearing width and height: the typed ratio decides the shape). The parameters
    are recorded in `prompt_parameters`, which is never applied again: the clean prompt a request
    keeps carries none, so a request made again from a picture's settings is the same request.
    `fields` without parameters come back as they are."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        return fields
    split = split_parameters(prompt)
    if not split.values:
        return fields
    values, fields = split.values, dict(fields)
    fields["prompt"] = split.text
    if "no" in values:
        fields["negative_prompt"] = ", ".join(part for part in (fields.get("negative_prompt") or "", *values["no"]) if part)
    if "style" in values:
        fields["styles"] = [*(fields.get("styles") or []), *values["style"]]
    for name, field in (("seed", "seed"), ("repeat", "n_iter"), ("stylize", "stylize"), ("chaos", "chaos"),
                        ("tile", "tile"), ("video", "progress_video"), ("ar", "aspect_ratio")):
        if name in values:
            fields[field] = values[name]
    if "ar" in values:
        fields["width"] = fields["height"] = None
    fields["prompt_parameters"] = values
    return fields


def format_parameters(values: dict) -> str:
    """The parameters as they would be typed: {"ar": "16:9", "no": ["cars"]} -> "--ar 16:9 --no cars"."""
    parts = []
    for name, value in values.items():
        for one in value if isinstance(value, list) else [value]:
            parts.append(f"--{name}" if one is True else f"--{name} {one}")
    return " ".join(parts)
