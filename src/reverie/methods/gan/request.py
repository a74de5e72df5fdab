"""A GAN request: which trained GAN, how many pictures from which seeds, how truncated, which class."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...request import MAX_SEED, BaseRequest


class GANRequest(BaseRequest):
    """`n_samples` pictures from the GAN `model` names (`gan:NAME`, `gan:FOLDER`, a GAN folder or
    a `reverie train gan` run folder); picture i from seed+i.

    `truncation` pulls each picture's w toward its class's mean w: 0 gives the mean picture,
    1 the GAN's full spread (above 1 exaggerates). `class_name` picks the class of a
    class-conditional GAN; left out, each picture's class follows from its seed. `walk` > 0 also
    writes a video that walks through the pictures' latents (slerp), `walk` frames from one to
    the next and back to the first.
    """

    mode: Literal["gan"] = "gan"
    model: str
    n_samples: int = Field(4, ge=1, le=64)
    truncation: float = Field(1.0, ge=0.0, le=2.0)
    class_name: str | None = None
    upscale: Literal[1, 2, 4] = 1  # enlarge the pictures with the built-in upscaler
    walk: int = Field(0, ge=0, le=240)
    video_format: Literal["mp4", "gif"] = "mp4"

    @model_validator(mode="after")
    def _walk_needs_two(self):
        if self.walk and self.n_samples < 2:
            raise ValueError("a walk goes from picture to picture: give n_samples of at least 2 (walk)")
        return self

    def picture_count(self) -> int:
        return self.n_samples

    def image_seeds(self) -> list[int]:
        base = self.seed if self.seed is not None and self.seed >= 0 else 0
        return [(base + i) % (MAX_SEED + 1) for i in range(self.n_samples)]

    def batch_of(self, seed: int) -> dict:
        """The fields that make the picture of `seed` again: it alone (a GAN draws every picture alone)."""
        return {"seed": seed, "n_samples": 1, "walk": 0}
