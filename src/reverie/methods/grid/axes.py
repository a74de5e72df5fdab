"""A grid's axes: what an axis may vary, how its values are read, and what one value sets.

An axis is a name and a list of values: `cfg=3,5,7`. Names are A1111's X/Y/Z plot's short ones
(`NAMES`) or any setting of the base request by its own field name (`eta`, `width`, `scorer`, ...).
Values are separated by commas; one holding a comma is quoted, as A1111 reads them
(`prompt=castle,"temple, ruined"`). A number axis also takes ranges: `1-5` (1,2,3,4,5),
`1-10 (+3)` (1,4,7,10), `0-1 [5]` (five values from 0 to 1).
"""

from __future__ import annotations

import csv
import math
import re
import types
import typing

from pydantic import BaseModel, ConfigDict, Field

from ...samplers import get_sampler
from ..diffusion.request import GenerationRequest

MAX_CELLS = 64

# A1111's short names -> the request field they set. `prompt` searches and replaces (Prompt S/R),
# `style` adds one style preset per value ("None": none).
NAMES = {"cfg": "cfg_scale", "steps": "steps", "sampler": "sampler", "seed": "seed", "strength": "strength",
         "model": "model", "style": "styles", "styles": "styles", "prompt": "prompt", "negative": "negative_prompt"}
# Fields no axis varies: the grid decides them (mode, pictures per cell, where it runs), they are
# pictures, or they are not settings.
FIXED = ("mode", "device", "dtype", "made", "keep_only", "init_image", "mask_image", "n_samples", "n_iter")
# How a value is written on the grid (A1111's words); other fields show as `name: value`.
LABELS = {"cfg_scale": "CFG scale", "steps": "Steps", "seed": "Seed", "strength": "Denoising strength",
          "model": "Model", "negative_prompt": "Negative", "sampler": "Sampler", "prompt": "Prompt S/R",
          "styles": "Styles", "step_cache": "Step cache", "quantize": "Quantize", "decoder": "Decoder",
          "runtime": "Runtime"}
NO_STYLE = "None"

_NUMBER = r"[+-]?\d+(?:\.\d*)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\)|\[\s*(\d+)\s*\])?\s*$")


class Axis(BaseModel):
    """One axis: a name (`NAMES` or a request field) and its values, in the order shown."""

    model_config = ConfigDict(extra="forbid")

    name: str
    values: list[str | int | float] = Field(min_length=1)

    @property
    def field(self) -> str:
        return NAMES.get(self.name, self.name)


def parse_axis(text: str) -> Axis:
    """`"cfg=3,5,7"` -> Axis(name="cfg", values=["3", "5", "7"]); a quoted value keeps its commas."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"write an axis as NAME=VALUE,VALUE,... (e.g. cfg=3,5,7), not {text!r}")
    try:
        read = next(csv.reader([values], skipinitialspace=True, strict=True))
    except (csv.Error, StopIteration):
        raise ValueError(f"cannot read the values {values!r}: separate them with commas, quote one that holds a comma") from None
    return Axis(name=name.strip().lower(), values=[value.strip() for value in read])


def known_field(axis: Axis) -> bool:
    return axis.field not in FIXED and axis.field in GenerationRequest.model_fields


def axis_names() -> str:
    return "cfg, steps, sampler, seed, strength, model, style, prompt, or a setting by its field name (eta, width, ...)"


def expanded(axis: Axis) -> list:
    """The axis's values with ranges written out (number fields only)."""
    if not is_number_field(axis.field):
        return list(axis.values)
    values: list = []
    for value in axis.values:
        found = _RANGE.match(value) if isinstance(value, str) else None
        values.extend(number_range(*found.groups()) if found else [value])
    return values


def number_range(start: str, end: str, step: str | None, count: str | None) -> list:
    """`1-5` -> [1..5]; `1-10 (+3)` -> [1, 4, 7, 10]; `0-1 [5]` -> five values, ends included."""
    integers = all(part is None or "." not in part for part in (start, end, step))
    kind = int if integers else float
    first, last = kind(start), kind(end)
    if count is not None:
        n = int(count)
        if not 1 <= n <= MAX_CELLS:
            raise ValueError(f"a range [{count}] takes 1 to {MAX_CELLS} values")
        spread = [first + (last - first) * i / max(n - 1, 1) for i in range(n)]
        return [round(v) if integers else round(v, 6) for v in spread]
    by = kind(step) if step is not None else (1 if last >= first else -1)
    if by == 0 or (last - first) * by < 0:
        raise ValueError(f"the range {start}-{end} never gets from {start} to {end} in steps of {by}")
    n = math.floor((last - first) / by + 1e-9) + 1
    if n > MAX_CELLS:
        raise ValueError(f"the range {start}-{end} has {n} values; at most {MAX_CELLS}")
    return [first + i * by if integers else round(first + i * by, 6) for i in range(n)]


def is_number_field(field: str) -> bool:
    types_ = _types(field)
    return bool(types_) and all(kind in (int, float, type(None)) for kind in types_) and not types_ <= {type(None)}


def field_value(field: str, value):
    """A value for `field` as the request reads it: text for text fields, a number for numbers."""
    if str in _types(field):
        return str(value)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def label(axis: Axis, value) -> str:
    """What the grid writes for a value: `CFG scale: 7`, `Euler`, the prompt's replacement."""
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    if axis.field in ("prompt", "styles"):
        return shown
    if axis.field == "sampler":
        return get_sampler(shown).label
    return f"{LABELS.get(axis.field, axis.field)}: {shown}"


def apply(fields: dict, axis: Axis, value) -> dict:
    """The request fields with one axis value applied (fields is not changed)."""
    fields = dict(fields)
    if axis.field == "prompt":
        search = str(axis.values[0])
        for name in ("prompt", "negative_prompt"):  # A1111's Prompt S/R replaces in both
            if fields.get(name):
                fields[name] = fields[name].replace(search, str(value))
    elif axis.field == "styles":
        fields["styles"] = list(fields.get("styles") or []) + ([] if str(value) == NO_STYLE else [str(value)])
    else:
        fields[axis.field] = field_value(axis.field, value)
    return fields


def _types(field: str) -> set:
    """The plain types a request field takes (`int | None` -> {int, NoneType}); empty for others."""
    info = GenerationRequest.model_fields.get(field)
    if info is None:
        return set()
    annotation = info.annotation
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union else (annotation,)
    return {arg for arg in args if isinstance(arg, type)} if all(isinstance(arg, type) for arg in args) else set()
