"""Deforum's video input: a video painted again, frame by frame.

Frame i of the result starts from frame `i * extract_every` of the input, fitted to the working
size (scaled to cover it, then centred). Before it is painted, `coherence(i)` of the previous
painted frame is mixed into it (0: the input frame alone; more: steadier), carried first along
the input's optical flow from frame i-1 to i (`flow`, DIS by default; `none` leaves ghosts where
the input moves), its colours are matched to the first painted frame's when `colour_coherence`
asks (not by default: matching an input frame's two flat colours to a painted frame's spread
of them comes out false), and `noise(i)` is added; then it is painted by image-to-image at
`strength(i)` and `cfg(i)`, with the timeline's prompt at i and its own seed (`seed_behavior`,
`fixed` unless given: the same noise every frame, so what stays still in the input stays still
in the video).

A frame needs only the input, the settings and the painted frame before it (read back from the
run folder as 8-bit pictures), so a stopped restyle goes on with the frames it would have made.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

from PIL import Image, ImageOps

from ...errors import BadRequest
from ...outputs.video import iter_frames
from ...progress import Progress
from ...prompts.parameters import MAX_ASPECT
from .animate import add_noise, frame_record, frame_seed
from .flow import backward_flow, carried
from .motion import blend, match_colours
from .painter import Painter
from .request import VideoRequest
from .schedules import parse_schedule, parse_timeline, prompt_at

FIELD = "video_input"
NETWORK_SIDE = 512  # a style network's frames: the input's long side at most this, unless a size is given


def input_aspect_ratio(request: VideoRequest) -> str:
    """The input's shape as "W:H" (within the widest ratio a picture takes): a restyle's frames
    keep it where no size is given."""
    width, height = next(iter_frames(request.video_input, FIELD)).size
    width, height = min(width, MAX_ASPECT * height), min(height, MAX_ASPECT * width)
    common = math.gcd(width, height)
    return f"{width // common}:{height // common}"


def check_fraction(name: str, values: list[float]) -> list[float]:
    """A schedule's values on every frame, each from 0 to 1; BadRequest(name) naming the first frame past that."""
    bad = next((i for i, value in enumerate(values) if not 0.0 <= value <= 1.0), None)
    if bad is not None:
        raise BadRequest(name, f"is {values[bad]:g} at frame {bad}; keep it from 0 to 1")
    return values


def input_frames(request: VideoRequest, size: tuple[int, int], start: int) -> Iterator[tuple[int, Image.Image, Image.Image | None]]:
    """(index, input frame, the input frame before it) from frame `start` on, each fitted to
    `size`; the input frame before `start` is read too (the flow starts there)."""
    every, first = request.extract_every, max(0, start - 1)
    taken = itertools.islice(iter_frames(request.video_input, FIELD), first * every, request.frames * every, every)
    before = None
    for index, source in enumerate(taken, first):
        source = ImageOps.fit(source, size, Image.LANCZOS)
        if index >= start:
            yield index, source, before
        before = source


def previous_carried(request: VideoRequest, read_frame: Callable[[int], Image.Image], index: int,
                     source: Image.Image, before: Image.Image) -> Image.Image:
    """Made frame index-1, carried along the input's flow from `before` to `source` (unless `flow` is none)."""
    previous = read_frame(index - 1)
    return previous if request.flow == "none" else carried(previous, backward_flow(before, source, request.flow))


class Restyle:
    """A restyle's frames, made in order from `start`; `read_frame(i)` gives an earlier painted frame."""

    def __init__(self, request: VideoRequest, painter: Painter, read_frame: Callable[[int], Image.Image]):
        self.request, self.painter, self.read_frame = request, painter, read_frame
        self.timeline = parse_timeline(request.prompts, "prompts")
        frames = request.frames
        values = {name: parse_schedule(getattr(request, name), name).values(frames)
                  for name in ("strength", "noise", "coherence")}
        values["cfg"] = parse_schedule(request.cfg, "cfg").values(frames) if request.cfg else [None] * frames
        for name in ("coherence", "strength"):
            check_fraction(name, values[name])
        self.values = values

    def record(self, index: int) -> dict:
        return frame_record(self.request, self.timeline, self.values, index,
                            source_frame=index * self.request.extract_every)

    def unet_steps(self) -> int:
        return sum(self.painter.steps_for(strength) for strength in self.values["strength"])

    def frames(self, start: int, progress: Progress) -> Iterator[tuple[int, Image.Image, dict]]:
        for index, source, before in input_frames(self.request, self.painter.size, start):
            yield index, self._frame(index, source, before, progress), self.record(index)

    def _frame(self, index: int, picture: Image.Image, input_before: Image.Image | None,
               progress: Progress) -> Image.Image:
        """Frame `index` painted from its input frame `picture` (`input_before`: the input frame before it)."""
        if index > 0:
            coherence = self.values["coherence"][index]
            if coherence > 0:
                picture = blend(picture, previous_carried(self.request, self.read_frame, index, picture, input_before),
                                coherence)
            if self.request.colour_coherence != "none":
                picture = match_colours(picture, self.read_frame(0), self.request.colour_coherence)
        seed = frame_seed(self.request.seed, index, self.request.seed_behavior)
        picture = add_noise(picture, self.values["noise"][index], seed)
        conditioning = self.painter.conditioning(*prompt_at(self.timeline, index, self.request.prompt_blend))
        return self.painter.img2img(picture, conditioning, seed, self.values["strength"][index],
                                    self.values["cfg"][index], progress)


class NetworkRestyle:
    """A restyle whose frames a trained style network paints (Johnson et al.: one pass a frame,
    no prompt), at the input's shape with its long side at most NETWORK_SIDE (or `width` and
    `height`). With `coherence`, that much of the previous painted frame, carried along the
    input's flow, is mixed into each new one: the network paints each frame anew, so it is its
    output that is steadied."""

    def __init__(self, request: VideoRequest, models, device, read_frame: Callable[[int], Image.Image]):
        from ..style.fast import style_network

        self.request, self.read_frame = request, read_frame
        self.network = style_network(models, request.network, device)
        self.size = network_size(request)
        self.coherence = check_fraction("coherence", parse_schedule(request.coherence, "coherence").values(request.frames))

    def frames(self, start: int, progress: Progress) -> Iterator[tuple[int, Image.Image, dict]]:
        from ..style.fast import apply_style_network

        for index, source, before in input_frames(self.request, self.size, start):
            made = apply_style_network(self.network, source)
            if index > 0 and self.coherence[index] > 0:
                made = blend(made, previous_carried(self.request, self.read_frame, index, source, before),
                             self.coherence[index])
            yield index, made, {"index": index, "source_frame": index * self.request.extract_every,
                                "coherence": self.coherence[index]}


def network_size(request: VideoRequest) -> tuple[int, int]:
    """A style network's frame size: `width` x `height` when given, else the input's, its long
    side at most NETWORK_SIDE, each side a multiple of 8."""
    if request.width and request.height:
        return request.width, request.height
    width, height = next(iter_frames(request.video_input, FIELD)).size
    scale = min(1.0, NETWORK_SIDE / max(width, height))
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)
