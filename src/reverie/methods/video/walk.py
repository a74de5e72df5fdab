"""A walk through a model's space: prompt interpolation and seed travel.

The walk goes through its stops (prompt, seed) in order. Frame i sits at a position along the
walk; between two stops its conditioning is theirs blended linearly and its starting noise
theirs slerped (Gaussian noise lives near a sphere: a straight line would pass through
low-norm, washed-out noise). A position on a stop is that stop's own picture, bit for bit: the
same encoded prompt, the same noise, the same sampler generator. Between stops, the sampler's
fresh noise (ancestral samplers only) comes from the nearer stop's seed.

Every frame depends on the settings alone, so any frame can be made again on its own and a
stopped walk continues with the frames it did not make.
"""

from __future__ import annotations

from typing import Iterator

import torch
from PIL import Image

from ...errors import BadRequest
from ...models.cache import ModelCache
from ...pixels import to_picture
from ...progress import Progress
from ..gan.latents import seed_latent
from ..gan.run import draw, gan_network
from .painter import Painter, mix
from .request import VideoRequest


def walk_positions(frames: int, stops: int, loop: bool) -> list[tuple[int, float]]:
    """(stop, fraction toward the next stop) of each frame. Without `loop` the first frame is the
    first stop and the last frame the last stop; with it the walk goes back to the first stop
    and ends one step before it."""
    segments = stops if loop else stops - 1
    span = frames if loop else frames - 1
    positions = []
    for index in range(frames):
        stop, remainder = divmod(index * segments, span)  # exact: a frame on a stop has fraction 0
        if stop == segments:
            stop, remainder = segments - 1, span
        positions.append((stop, remainder / span))
    return positions


class Walk:
    def __init__(self, request: VideoRequest, painter: Painter):
        self.request, self.painter = request, painter
        self.stops = request.walk_stops()
        self.positions = walk_positions(request.frames, len(self.stops), request.loop)
        self._noise: dict[int, object] = {}

    def record(self, index: int) -> dict:
        """What frame `index` is made of, for the video's record."""
        stop, t = self.positions[index]
        following = (stop + 1) % len(self.stops)
        return {"index": index, "from": stop, "to": following, "t": round(t, 6),
                "prompt": self.stops[stop][0] if t < 0.5 else self.stops[following][0],
                "seed": self.stops[stop][1] if t < 0.5 else self.stops[following][1]}

    def unet_steps(self) -> int:
        return self.request.frames * self.painter.request.steps

    def frames(self, start: int, progress: Progress) -> Iterator[tuple[int, Image.Image, dict]]:
        for index in range(start, self.request.frames):
            yield index, self.frame(index, progress), self.record(index)

    def frame(self, index: int, progress: Progress) -> Image.Image:
        stop, t = self.positions[index]
        following = (stop + 1) % len(self.stops)
        (prompt_a, seed_a), (prompt_b, seed_b) = self.stops[stop], self.stops[following]
        conditioning = self.painter.conditioning(prompt_a, prompt_b, t)
        noise = mix(self._stop_noise(seed_a), self._stop_noise(seed_b), t, spherical=True)
        return self.painter.txt2img(conditioning, seed_a if t < 0.5 else seed_b, progress, noise=noise)

    def _stop_noise(self, seed: int):
        if seed not in self._noise:
            self._noise[seed] = self.painter.noise(seed)
        return self._noise[seed]


class GANWalk(Walk):
    """A walk through a trained GAN: its stops' z slerped, their classes blended. A stop's prompt
    names its class (a conditional GAN); without one, the class follows from the seed as
    `reverie generate --model gan:...` draws it, so a stop's frame is that command's picture of
    its seed."""

    def __init__(self, request: VideoRequest, models: ModelCache, device: torch.device):
        self.request = request
        self.network = gan_network(models, request.model, device)
        self.stops = request.walk_stops()
        self.positions = walk_positions(request.frames, len(self.stops), request.loop)
        self.classes = [self._class_of(prompt, seed) for prompt, seed in self.stops]

    def _class_of(self, prompt: str, seed: int) -> torch.Tensor | None:
        classes = self.network.classes
        if not classes:
            if prompt.strip():
                raise BadRequest("prompts", "this GAN has no classes (it was trained unconditional); leave the prompts "
                                            "out and walk between seeds")
            return None
        if prompt.strip() and prompt.strip() not in classes:
            raise BadRequest("prompts", f"this GAN has no class {prompt.strip()!r}; use one of {', '.join(classes)}")
        index = classes.index(prompt.strip()) if prompt.strip() else seed % len(classes)
        return torch.nn.functional.one_hot(torch.tensor(index), len(classes)).float()

    @property
    def size(self) -> tuple[int, int]:
        return self.network.size, self.network.size

    def frame(self, index: int, progress: Progress) -> Image.Image:
        stop, t = self.positions[index]
        following = (stop + 1) % len(self.stops)
        z = mix(seed_latent(self.stops[stop][1], self.network.z_dim), seed_latent(self.stops[following][1],
                                                                                  self.network.z_dim), t, spherical=True)
        a, b = self.classes[stop], self.classes[following]
        labels = None if a is None else mix(a, b, t)[None]
        return to_picture(draw(self.network, z, labels, 1.0), -1.0, 1.0)
