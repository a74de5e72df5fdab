"""Dream videos: one Dream that moves (zoom, turn, pan) and changes prompts on a timeline.

As in the VQGAN+CLIP zoom notebooks, frame 0 is a dream of `first_iterations` iterations; every
later frame moves the previous frame's picture, restarts the dream from the moved picture
(`Dream.warp`), switches to the prompt the timeline gives for that frame (`Dream.retarget`) and
dreams on for `iterations_per_frame` iterations. The frame is the dream's picture then.

All of a dream video's state is its Dream's (`Dream.save` in `state_dir`); which frame comes
next follows from the dream's step, so a video continued from its state makes exactly the
frames an uninterrupted one makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ...errors import BadCheckpoint, BadRequest
from ...models.cache import ModelCache
from ...progress import Interrupted, Progress, ProgressEvent
from ..dreaming.dream import SETTINGS_FILE, STATE_FILE, Dream
from ..dreaming.prompts import DreamPrompt, format_dream_prompt, parse_dream_prompt
from ..dreaming.request import DreamRequest
from .schedules import prompt_at

FIRST_ITERATIONS, ITERATIONS_PER_FRAME = 100, 20  # when the settings leave them out (VideoRequest's defaults)
# DreamRequest fields a dream video sets itself: the prompt comes from the timeline, the length
# from the frames, the motion from `moves` (the dream's own zoom mode would move it twice).
# (save_every is harmless and unused: a dream video saves after each frame.)
VIDEO_OWNED = frozenset({"mode", "prompt", "continue_from", "iterations", "patience", "zoom", "zoom_every", "video"})

Move = Callable[[Image.Image], Image.Image]


class DreamVideo:
    """Makes a dream video's frames one at a time, in order, and keeps its state in `state_dir`.

    `settings`: the DreamRequest fields that shape the dream (generator, guides, prior, cutouts,
    lr, optimizer, seed, width, height, image_prompts, init_image, ...), plus
    `first_iterations` (frame 0's iterations, default 100) and `iterations_per_frame` (each later
    frame's, default 20). The fields the video sets itself (VIDEO_OWNED: prompt, iterations,
    zoom, ...) are refused. `timeline`: keyed prompts [(frame, prompt)] (`schedules.parse_timeline`),
    each prompt in the dream syntax (`text:weight:stop | ...`). With `blend`, a frame between two
    keys dreams toward both, their weights cross-faded (`blended_prompt`); without it, toward the
    latest key's prompt. `moves(i)`: the move from frame i-1 to frame i, a function picture ->
    picture of the same size, or None where the frame does not move (`moves` None: no motion).
    A generator that cannot start from a picture (BigGAN, a GAN) is refused, naming `motion`,
    at the first frame that moves (and at once when frame 1 moves).

    When `state_dir` already holds a saved dream (dream.json and state.pt), the video continues
    from it with the settings it was saved with: `next_frame` is the first frame not yet made.
    """

    def __init__(self, settings: dict, timeline: list[tuple[int, str]], moves: Callable[[int], Move | None] | None,
                 state_dir: Path, device: torch.device | str = "cpu", models: ModelCache | None = None,
                 blend: bool = False):
        settings = dict(settings)
        self.first_iterations = _iterations(settings.pop("first_iterations", FIRST_ITERATIONS), "first_iterations")
        self.iterations_per_frame = _iterations(settings.pop("iterations_per_frame", ITERATIONS_PER_FRAME),
                                                "iterations_per_frame")
        owned = sorted(VIDEO_OWNED & settings.keys())
        if owned:
            raise ValueError(f"a dream video sets {', '.join(owned)} itself; leave them out of its dream settings")
        if not timeline:
            raise BadRequest("prompts", "give at least one prompt for the dream video")
        self.timeline, self.moves, self.blend = sorted(timeline), moves, blend
        self.state_dir = Path(state_dir)
        if (self.state_dir / SETTINGS_FILE).is_file() and (self.state_dir / STATE_FILE).is_file():
            self.dream = Dream.resume(self.state_dir, device, models)
        else:
            request = DreamRequest.build(**settings, prompt=self.prompt_for(0))
            self.dream = Dream(request, device, models)
        self.next_frame = self._frames_done()
        if not self.dream.generator.can_start_from_image and moves is not None and moves(1) is not None:
            self.dream.warp(lambda picture: picture)  # refused, naming motion, before any iteration

    def _frames_done(self) -> int:
        """How many frames the dream's step says were made: 0, or 1 + k for first + k * per_frame."""
        step = self.dream.step
        if step == 0:
            return 0
        later, rest = divmod(step - self.first_iterations, self.iterations_per_frame)
        if later < 0 or rest:
            raise BadCheckpoint(
                f"the dream in {self.state_dir} stopped at step {step}, which is not the end of a frame of this "
                f"video ({self.first_iterations} iterations, then {self.iterations_per_frame} per frame); "
                "continue it with the settings it was made with")
        return later + 1

    def prompt_for(self, index: int) -> str:
        """The dream prompt in force at frame `index`."""
        before, after, weight = prompt_at(self.timeline, index, self.blend)
        if weight <= 0 or before == after:
            return before
        return after if weight >= 1 else blended_prompt(before, after, weight)

    def frame(self, index: int, progress: Progress | None = None) -> Image.Image:
        """Make frame `index` (which must be `next_frame`) and return it at the dream's own size.

        Reports ProgressEvent("dream", iteration, iterations of this frame) after each iteration
        (with the frame as preview on the last, when previews are asked for). When `progress`
        asks to stop, raises Interrupted between iterations; the frame is then not made and the
        dream is put back where the previous frame left it (so is it on any other error).
        """
        if index != self.next_frame:
            raise BadCheckpoint(f"the dream video in {self.state_dir} has made {self.next_frame} frames; the next "
                                f"frame it can make is {self.next_frame}, not {index}")
        progress = progress or Progress()
        dream = self.dream
        start = dream.checkpoint()
        try:
            move = self.moves(index) if index and self.moves is not None else None
            if move is not None:
                dream.warp(move)
            dream.retarget(self.prompt_for(index))
            total = self.first_iterations if index == 0 else self.iterations_per_frame
            for done in range(1, total + 1):
                if progress.stop_requested():
                    raise Interrupted(f"stopped while dreaming frame {index}")
                _, score = dream.iterate()
                picture = dream.picture() if done == total else None
                progress(ProgressEvent("dream", done, total, message=f"frame {index}: score {score:.3f}",
                                       preview=picture if progress.previews else None))
        except BaseException:
            dream.rewind(start)
            raise
        self.next_frame = index + 1
        return picture

    def save(self) -> None:
        """Save the dream (its state, settings and the prompt in force) in `state_dir`."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.dream.save(self.state_dir, stopped="running")


def blended_prompt(before: str, after: str, weight: float) -> str:
    """One dream prompt pulling toward both: `before`'s parts at (1 - weight) of their weights,
    `after`'s at `weight` of theirs (each keeps its stop)."""
    parts = [DreamPrompt(p.text, p.weight * (1 - weight), p.stop) for p in parse_dream_prompt(before)]
    parts += [DreamPrompt(p.text, p.weight * weight, p.stop) for p in parse_dream_prompt(after)]
    return format_dream_prompt(parts)


def _iterations(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(name, f"give a whole number of iterations of at least 1, not {value!r}")
    return value
