"""A LoRA training request: teach a base model a concept from 10 or more pictures of it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field, field_validator, model_validator

from ...errors import BadRequest
from ...request import BaseRequest

STEPS_PER_CHARGE = 50  # the studio charges one request per this many training steps
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a file stem that <lora:NAME:W> can spell


def name_from(trigger: str) -> str:
    """A LoRA name made from a trigger word ("ohwx cat" -> "ohwx_cat")."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", trigger).strip("_.-")[:64]
    return name or "lora"


class TrainLoraRequest(BaseRequest):
    """Train a LoRA of `model` on `pictures` (paths or PIL pictures, at least ten), each captioned
    with `trigger`; the result is `NAME.safetensors` (kohya's format), used as `<lora:NAME:1>`
    with the trigger in the prompt. The job's picture is the last grid of samples."""

    mode: Literal["train_lora"] = "train_lora"
    pictures: list[Any] = Field(default_factory=list)
    model: str | None = None  # the base model; None: the default model
    trigger: str = Field(..., min_length=1, max_length=64)
    name: str | None = None  # the LoRA's name; None: made from the trigger
    steps: int = Field(500, ge=1, le=100_000)
    rank: int = Field(8, ge=1, le=128)
    alpha: float | None = Field(None, gt=0.0, le=1024.0)  # None: the rank
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    batch_size: int = Field(1, ge=1, le=64)
    sample_every: int = Field(100, ge=1)  # a grid of samples every this many steps, and at the end
    resolution: int | None = Field(None, ge=64, le=2048)  # None: the model's native size

    @field_validator("pictures")
    @classmethod
    def _pictures(cls, value: list):
        for item in value:
            if not isinstance(item, (str, Path, Image.Image)):
                raise ValueError("each picture must be a file path or a PIL image")
        return [str(item) if isinstance(item, Path) else item for item in value]

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, value: str):
        if not value.strip() or re.search(r"[<>\r\n]", value):
            raise ValueError("the trigger is a word or two that calls up the concept, e.g. sks (no < > or line breaks)")
        return value.strip()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None):
        if value is not None and not NAME.match(value):
            raise ValueError("a LoRA name is letters, digits, '_', '-' and '.' (at most 64, starting with a letter "
                             "or digit), as <lora:NAME:1> spells it")
        return value

    @model_validator(mode="after")
    def _enough(self):
        from ...training.data.concept import MIN_PICTURES  # here: training.data imports torch

        if len(self.pictures) < MIN_PICTURES:
            raise BadRequest("pictures", f"{len(self.pictures)} picture(s); a LoRA learns a concept from at least "
                                         f"{MIN_PICTURES} pictures of it")
        if self.name is None:
            self.name = name_from(self.trigger)
        return self

    def charge_units(self) -> int:
        """One request per STEPS_PER_CHARGE training steps (its samples included)."""
        return math.ceil(self.steps / STEPS_PER_CHARGE)

    def settings(self) -> dict:
        data = super().settings()
        data["pictures"] = [item if isinstance(item, str) else "<image>" for item in self.pictures]
        return data
