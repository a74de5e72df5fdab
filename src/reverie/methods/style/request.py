"""A style-transfer request: a content picture in the style of one or more weighted style
pictures (optimised, Gatys et al.), or through a trained style network (one pass, Johnson et al.)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field, field_validator, model_validator

from ...errors import BadRequest
from ...models.style_feature_names import parse_features
from ...request import BaseRequest

OPTIMIZERS = ("lbfgs", "adam")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}  # pixels in [0, 1]
DEFAULT_STRENGTH = 1.0  # style against content, each relative to its target (docs/style-transfer.md)
DEFAULT_SMOOTHNESS = 0.02  # total-variation weight: damps speckle


class StyleRequest(BaseRequest):
    """`content_image` restyled. With `style_images` (and optional `style_weights`, normalised
    to sum 1) the picture itself is optimised for `steps` in a run folder that `continue_from`
    takes up again; with `network` a trained style network paints it in one pass. A continued
    run takes only what changes (steps, strength, smoothness, save_every, lr)."""

    IMAGE_FIELDS = ("content_image",)

    mode: Literal["style"] = "style"
    content_image: Any = None
    style_images: list[Any] = Field(default_factory=list)  # paths or PIL pictures
    style_weights: list[float] | None = None
    network: str | None = None  # a style network: a name `reverie models` lists, or a run folder
    features: str = "builtin"
    size: int = Field(256, ge=32, le=2048)  # the longest side of the result
    steps: int = Field(150, ge=1, le=100_000)
    optimizer: str = "lbfgs"
    lr: float | None = Field(None, gt=0.0, le=10.0)
    init: Literal["content", "noise"] = "content"
    strength: float = Field(DEFAULT_STRENGTH, ge=0.0, le=1e6)
    smoothness: float = Field(DEFAULT_SMOOTHNESS, ge=0.0, le=100.0)
    preserve_colour: bool = False
    save_every: int = Field(50, ge=1)
    continue_from: str | None = None

    @field_validator("style_images")
    @classmethod
    def _pictures(cls, value: list):
        for item in value:
            if not isinstance(item, (str, Path, Image.Image)):
                raise ValueError("each style picture must be a file path or a PIL image")
        return [str(item) if isinstance(item, Path) else item for item in value]

    @field_validator("style_weights")
    @classmethod
    def _weights(cls, value):
        if value is not None and (not value or any(not w > 0 for w in value)):
            raise ValueError("every style weight must be above 0 (e.g. 0.7 and 0.3)")
        return value

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str):
        if value.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; use lbfgs or adam")
        return value.lower()

    @field_validator("features")
    @classmethod
    def _features(cls, value: str):
        parse_features(value)
        return value

    @model_validator(mode="after")
    def _what_to_do(self):
        if self.continue_from is not None:
            return self  # a continued run keeps its pictures
        # BadRequest (not ValueError) so that the message names the field, not the whole request
        if self.content_image is None:
            raise BadRequest("content_image", "give a content picture, or continue_from a style run folder")
        if self.network is not None and self.style_images:
            raise BadRequest("network", "give style pictures or a style network, not both")
        if self.network is None and not self.style_images:
            raise BadRequest("style_images", "give at least one style picture, or a trained style network (network)")
        if self.style_weights is not None and len(self.style_weights) != len(self.style_images):
            raise BadRequest("style_weights", f"{len(self.style_weights)} weights for {len(self.style_images)} style "
                                              f"pictures; give one each")
        return self

    def weights(self) -> list[float]:
        """The style weights, summing to 1 (equal when none were given)."""
        given = self.style_weights or [1.0] * len(self.style_images)
        return [w / sum(given) for w in given]

    def settings(self) -> dict:
        data = super().settings()
        data["style_images"] = [item if isinstance(item, str) else "<image>" for item in self.style_images]
        return data
