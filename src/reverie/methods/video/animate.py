"""Deforum's 2D animation: each frame painted by image-to-image from the previous one, moved by
the camera.

Frame 0 is a txt2img picture of the timeline's first prompt (or `init_image` painted at
strength(0)). Every later frame made by diffusion (a key frame: every `cadence`th, and the last)
starts from the previous key frame warped by the camera's moves since (zoom, angle,
translation, composed into one warp so the picture is resampled once), its colours matched to
frame 0's (`colour_coherence`; without it the feedback loop drifts to mush), Gaussian `noise`
added, then painted again at `strength` with its own seed (`seed_behavior`), CFG scale and
prompt (between timeline keys, the two prompts' conditioning blended). Strength 0 keeps the
warped frame as it is. Between key frames p and j, frame m blends key p moved forward to m with
key j moved back from j to m, weighted by how far m is from each.

Everything a frame needs comes from the settings and the frames before it, read from the run
folder as 8-bit pictures in the uninterrupted run too, so a continued animation makes the same
frames.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ...progress import Progress
from ...request import MAX_SEED
from ..diffusion.images import load_image
from .motion import blend, camera_matrix, compose, invert, is_identity, match_colours, warp
from .painter import Painter
from .request import VideoRequest, key_frames
from .schedules import parse_schedule, parse_timeline, prompt_at

NOISE_STREAM = MAX_SEED + 2  # a frame's pixel noise: seed + this, a stream no picture's seed draws from


def frame_seed(seed: int, index: int, behaviour: str) -> int:
    """Frame `index`'s seed: seed+index (iter), seed (fixed), or drawn from (seed, index) (random)."""
    if behaviour == "fixed":
        return seed
    if behaviour == "iter":
        return (seed + index) % (MAX_SEED + 1)
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def add_noise(picture: Image.Image, amount: float, seed: int) -> Image.Image:
    """Gaussian noise of standard deviation `amount` (pixel values 0..1), drawn from the frame's seed."""
    if amount <= 0:
        return picture
    generator = torch.Generator().manual_seed(seed + NOISE_STREAM)
    noise = torch.randn(picture.height, picture.width, 3, generator=generator).numpy()
    pixels = np.asarray(picture, dtype=np.float32) / 255.0 + amount * noise
    return Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8))


def frame_record(request: VideoRequest, timeline: list, values: dict, index: int, **facts) -> dict:
    """What frame `index`'s file records: its prompt (and the next one blended in), its seed, its
    schedules' values, and `facts` of the motion's own."""
    before, after, weight = prompt_at(timeline, index, request.prompt_blend)
    record = {"index": index, **facts, "prompt": before, "seed": frame_seed(request.seed, index, request.seed_behavior)}
    if weight > 0:
        record |= {"next_prompt": after, "prompt_weight": round(weight, 4)}
    return record | {name: each[index] for name, each in values.items() if each[index] is not None}


def camera_moves(request: VideoRequest, size: tuple[int, int], factor: int) -> list:
    """Each frame's camera move (the move from the frame before), for frames made at `size` and
    shown `factor` times larger (translations are in the video's pixels)."""
    values = {name: parse_schedule(getattr(request, name), name).values(request.frames)
              for name in ("zoom", "angle", "translation_x", "translation_y")}
    return [camera_matrix(size, values["zoom"][i], values["angle"][i], values["translation_x"][i] / factor,
                          values["translation_y"][i] / factor) for i in range(request.frames)]


class Animation:
    """An animation's frames, made in order from `start`; `read_frame(i)` gives an earlier frame."""

    def __init__(self, request: VideoRequest, painter: Painter, read_frame: Callable[[int], Image.Image]):
        self.request, self.painter, self.read_frame = request, painter, read_frame
        self.timeline = parse_timeline(request.prompts, "prompts")
        self.keys = key_frames(request.frames, request.cadence)
        frames = request.frames
        values = {name: parse_schedule(getattr(request, name), name).values(frames)
                  for name in ("zoom", "angle", "translation_x", "translation_y", "strength", "noise")}
        values["cfg"] = parse_schedule(request.cfg, "cfg").values(frames) if request.cfg else [None] * frames
        self.values = values
        self.moves = camera_moves(request, painter.size, painter.factor)

    def record(self, index: int) -> dict:
        return frame_record(self.request, self.timeline, self.values, index, key=index in self.keys)

    def unet_steps(self) -> int:
        strength = self.values["strength"]
        first = self.painter.request.steps if self.request.init_image is None else self.painter.steps_for(strength[0])
        return first + sum(self.painter.steps_for(strength[key]) for key in self.keys[1:])

    def resume_point(self, done: int) -> int:
        """The first frame to make when frames 0..done-1 exist: after the last key frame among them
        (in-between frames after it are made again: they need the next key frame)."""
        made_keys = [key for key in self.keys if key < done]
        return made_keys[-1] + 1 if made_keys else 0

    def frames(self, start: int, progress: Progress) -> Iterator[tuple[int, Image.Image, dict]]:
        if start == 0:
            first = self._first_frame(progress)
            yield 0, first, self.record(0)
            start = 1
        for previous, key in zip(self.keys, self.keys[1:]):
            if key < start:
                continue
            source = self.read_frame(previous)
            made = self._key_frame(source, previous, key, progress)
            for between in range(previous + 1, key):
                yield between, self._between(source, made, previous, between, key), self.record(between)
            yield key, made, self.record(key)

    # -- the frames ------------------------------------------------------------------------
    def _first_frame(self, progress: Progress) -> Image.Image:
        seed = frame_seed(self.request.seed, 0, self.request.seed_behavior)
        conditioning = self._conditioning(0)
        if self.request.init_image is None:
            return self.painter.txt2img(conditioning, seed, progress)
        picture = load_image(self.request.init_image, "init_image").convert("RGB").resize(self.painter.size, Image.LANCZOS)
        return self.painter.img2img(picture, conditioning, seed, self.values["strength"][0], self.values["cfg"][0], progress)

    def _key_frame(self, source: Image.Image, previous: int, key: int, progress: Progress) -> Image.Image:
        picture = self._moved(source, previous, key)
        strength = self.values["strength"][key]
        if strength <= 0:
            return picture  # nothing to paint: the moved frame itself
        if self.request.colour_coherence != "none":
            picture = match_colours(picture, self.read_frame(0), self.request.colour_coherence)
        seed = frame_seed(self.request.seed, key, self.request.seed_behavior)
        picture = add_noise(picture, self.values["noise"][key], seed)
        return self.painter.img2img(picture, self._conditioning(key), seed, strength, self.values["cfg"][key], progress)

    def _between(self, source: Image.Image, made: Image.Image, previous: int, index: int, key: int) -> Image.Image:
        forward = self._moved(source, previous, index)
        back = warp(made, invert(compose(*self.moves[index + 1 : key + 1])), self.request.border)
        return blend(forward, back, (index - previous) / (key - previous))

    def _moved(self, picture: Image.Image, start: int, end: int) -> Image.Image:
        """`picture` (frame `start`) moved by the camera's moves of frames start+1 .. end, in one warp."""
        move = compose(*self.moves[start + 1 : end + 1])
        return picture.copy() if is_identity(move) else warp(picture, move, self.request.border)

    def _conditioning(self, index: int):
        before, after, weight = prompt_at(self.timeline, index, self.request.prompt_blend)
        return self.painter.conditioning(before, after, weight)
