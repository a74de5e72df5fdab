"""A grid request: a base request (any diffusion mode) and up to three axes that vary it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...errors import BadRequest
from ...request import BaseRequest
from ..diffusion.request import MODES, GenerationRequest
from .axes import MAX_CELLS, NO_STYLE, Axis, apply, axis_names, expanded, known_field, label, parse_axis

AXES = ("x", "y", "z")
# Settings the grid holds for every cell (its seed is the cells' seed unless the seed axis varies it).
LIFTED = ("seed", "device", "dtype")


@dataclass(frozen=True)
class Cell:
    """One cell: where it sits (column, row, grid), its axis values and the request that makes it."""

    column: int
    row: int
    sheet: int
    values: dict  # {"x": {"axis": name, "value": value, "label": text}, ...} for the axes given
    request: GenerationRequest


class GridRequest(BaseRequest):
    """Compare settings side by side, as A1111's X/Y/Z plot does: every combination of the axes'
    values is a cell, a request made from `base` with those values, run by its own method and
    written as its own picture; then one labelled grid per z value (x across, y down).

    `base` holds the fields of a diffusion request (txt2img by default; `n_samples` per cell
    defaults to 1). Every cell uses the grid's `seed` unless the seed axis varies it. An axis is
    `{"name": "cfg", "values": [3, 5, 7]}` or the text `"cfg=3,5,7"` (see axes.py).
    """

    mode: Literal["grid"] = "grid"
    base: dict = Field(default_factory=dict)
    x: Axis | None = None
    y: Axis | None = None
    z: Axis | None = None

    @model_validator(mode="before")
    @classmethod
    def _lift_from_base(cls, data):
        """The base's seed, device and dtype are the grid's (a cell gets them from the grid)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        base = data.get("base")
        if isinstance(base, BaseRequest):
            base = base.model_dump(exclude_unset=True)
        if isinstance(base, dict):
            base = {key: value for key, value in base.items() if key != "made"}
            for name in LIFTED:
                if name in base:
                    value = base.pop(name)
                    if data.get(name) is None:
                        data[name] = value
            base.setdefault("mode", "txt2img")
            base.setdefault("n_samples", 1)
            data["base"] = base
        return data

    @field_validator("x", "y", "z", mode="before")
    @classmethod
    def _axis_text(cls, value):
        return parse_axis(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self):
        if self.base.get("mode") not in MODES:
            raise BadRequest("base.mode", f"a grid varies a diffusion request: use one of {', '.join(MODES)}")
        try:
            GenerationRequest.build(**self.base)
        except BadRequest as exc:
            raise BadRequest(f"base.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None
        given = self.axes()
        if not given:
            raise BadRequest("x", "give at least one axis, e.g. cfg=3,5,7")
        seen: dict[str, str] = {}
        for which, axis in given.items():
            if not known_field(axis):
                raise BadRequest(which, f"unknown axis {axis.name!r}; use {axis_names()}")
            if axis.field in seen:
                raise BadRequest(which, f"{axis.name} is already the {seen[axis.field]} axis; vary a setting on one axis only")
            seen[axis.field] = which
        counts = [len(self.values(which)) for which in given]
        cells = 1
        for count in counts:
            cells *= count
        if cells > MAX_CELLS:
            shape = " × ".join(f"{count} {axis.name} values" for count, axis in zip(counts, given.values()))
            raise BadRequest(max(given, key=lambda which: len(self.values(which))),
                             f"{shape} is {cells} cells; a grid has at most {MAX_CELLS}: give fewer values")
        for which, axis in given.items():
            self._check_values(which, axis)
        self.cells()  # every combination is a valid request (one value may only clash with another)
        return self

    def _check_values(self, which: str, axis: Axis) -> None:
        """Each value alone on the base: a wrong one is named with its axis."""
        values = self.values(which)
        if axis.field == "prompt":
            search = str(values[0])
            texts = [self.base.get("prompt") or "", self.base.get("negative_prompt") or ""]
            if not search or not any(search in text for text in texts):
                raise BadRequest(which, f"prompt search/replace: the first value {search!r} is what is replaced, "
                                        "and it is not in the prompt; start the values with words of the prompt")
        for value in values:
            if axis.field == "styles":
                _check_style(which, value)
            try:
                GenerationRequest.build(**apply(self.base, axis, value))
            except BadRequest as exc:
                raise BadRequest(which, f"{axis.name} value {value!r}: {exc}") from None

    def axes(self) -> dict[str, Axis]:
        """{"x": axis, ...} for the axes given."""
        return {which: getattr(self, which) for which in AXES if getattr(self, which) is not None}

    def values(self, which: str) -> list:
        axis = getattr(self, which)
        if axis is None:
            return [None]
        try:
            return expanded(axis)
        except ValueError as exc:
            raise BadRequest(which, f"{axis.name}: {exc}") from None

    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, sheets)."""
        return tuple(len(self.values(which)) for which in AXES)

    def cells(self) -> list[Cell]:
        """Every cell, sheet by sheet, row by row, column by column (the order they are made in)."""
        given = self.axes()
        cells = []
        for (iz, z), (iy, y), (ix, x) in itertools.product(*(enumerate(self.values(w)) for w in reversed(AXES))):
            fields, values = dict(self.base), {}
            for which, value in (("x", x), ("y", y), ("z", z)):
                if which in given:
                    fields = apply(fields, given[which], value)
                    values[which] = {"axis": given[which].name, "value": value, "label": label(given[which], value)}
            for name in LIFTED:
                if not (name == "seed" and _varies_seed(given)):
                    fields[name] = getattr(self, name)
            try:
                request = GenerationRequest.build(**fields)
            except BadRequest as exc:  # two values that are right alone clash together
                shown = ", ".join(value["label"] for value in values.values())
                raise BadRequest(list(given)[-1], f"the cell {shown} cannot be made: {exc}") from None
            cells.append(Cell(ix, iy, iz, values, request))
        return cells

    def parts(self) -> list[BaseRequest]:
        return [cell.request for cell in self.cells()]

    def cell_pictures(self) -> int:
        """Pictures every cell makes (n_samples x n_iter of the base)."""
        return self.cells()[0].request.picture_count()

    def picture_count(self) -> int:
        """The cells' pictures, then one labelled grid per z value."""
        columns, rows, sheets = self.shape()
        return columns * rows * sheets * self.cell_pictures() + sheets

    def candidate_count(self) -> int:
        return sum(part.candidate_count() for part in self.parts()) + self.shape()[2]

    def settings(self) -> dict:
        data = super().settings()
        base = GenerationRequest.build(**self.base)
        data["base"] = {key: value for key, value in base.settings().items() if key not in LIFTED}
        return data


def _varies_seed(given: dict[str, Axis]) -> bool:
    return any(axis.field == "seed" for axis in given.values())


def _check_style(which: str, value) -> None:
    from ...prompts.styles import get_style

    if str(value) != NO_STYLE:
        try:
            get_style(str(value))
        except BadRequest as exc:
            raise BadRequest(which, f"style value {value!r}: {str(exc).removeprefix('style: ')}") from None
