"""What every method's request shares: the seed, where and in what precision to run, and the
pictures it takes in. Each method family builds its own request model on this one
(`methods/<name>/request.py`); validation happens there, once, with messages that name the field.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import BadRequest

MAX_SIDE = 4096
MAX_SEED = 2**32 - 1
DEVICES = ("auto", "cpu", "cuda", "mps")


class BaseRequest(BaseModel):
    """The fields and checks every request has. `mode` names the method (see methods/registry.py);
    `seed` None (or -1) means "pick one at random"; fields named in `IMAGE_FIELDS` take a file path
    or a PIL image."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ()

    mode: str
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Pictures an earlier run of this request already made (a job resumed after the server
    # stopped or crashed); the method makes the rest, each as the whole run would have. Not a
    # setting: left out of `settings()`, so the pictures' metadata and `--from` never see it.
    made: int = Field(0, ge=0)

    @field_validator("*")
    @classmethod
    def _image_reference(cls, value, info):
        if info.field_name not in cls.IMAGE_FIELDS or value is None or isinstance(value, Image.Image):
            return value
        if isinstance(value, (str, Path)):
            return str(value)
        raise ValueError("must be a file path or a PIL image")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str):
        if value.split(":")[0] not in DEVICES:
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value

    def with_seed(self):
        """A copy whose seed is fixed: the given one, or a random one when none (or -1) was given."""
        if self.seed is not None and self.seed >= 0:
            return self
        return self.model_copy(update={"seed": random.randint(0, MAX_SEED - 64 * 1000)})

    def picture_count(self) -> int:
        """How many pictures the request makes."""
        return 1

    def candidate_count(self) -> int:
        """How many pictures are made to keep `picture_count()` of them (a bar's total)."""
        return self.picture_count()

    def parts(self) -> list["BaseRequest"]:
        """The requests a run of this one is made of, each run as if it were alone: itself; a
        grid's cells. The studio checks its limits, models and cost on these."""
        return [self]

    def charge_units(self) -> int:
        """How many requests' worth the studio charges for this one: one per part (a grid: each
        of its cells, what they would cost asked for one by one); a video charges by its frames."""
        return len(self.parts())

    def settings(self) -> dict:
        """The request as plain JSON-able data (pictures as their paths, or a placeholder)."""
        data = self.model_dump(exclude=set(self.IMAGE_FIELDS) | {"made"})
        for name in self.IMAGE_FIELDS:
            value = getattr(self, name)
            data[name] = value if (value is None or isinstance(value, (str, list))) else "<image>"
        return data

    @classmethod
    def build(cls, **fields):
        """The request, or one BadRequest that names the first field to change."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise bad_request_from(exc) from None


def bad_request_from(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return BadRequest(field, message)
