"""Midjourney's `--video`: a video of a request's pictures being made.

Its frames are the live previews the denoising draws (every PREVIEW_EVERY steps, each batch's
pictures side by side, on either path: the torch pipeline's or the bundle's), each batch's ending
on its finished pictures, the last held HOLD_S seconds. It is written beside the pictures
(`NNNNN-SEED-progress.mp4`) and reported as `result.video`; a stopped request writes what it saw.
The previews are asked for whether or not the listener wants them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from PIL import Image

from ...outputs.files import Outputs
from ...progress import Progress, ProgressEvent
from ...result import Result

FPS = 8.0
HOLD_S = 1.0


def recorded(request, progress: Progress, outputs: Outputs, run: Callable[[Progress], Result]) -> Result:
    """`run` with previews on, each kept as a frame; then the video of them, when there is a folder."""
    strips: list[tuple[int, Image.Image]] = []  # (batch, its pictures' previews side by side)

    def report(event: ProgressEvent) -> None:
        if event.stage == "denoise" and event.preview is not None:
            strips.append((event.batch, event.preview))
        progress.report(event if progress.previews else replace(event, preview=None))

    result = run(Progress(report, progress.should_stop, previews=True))
    if strips and result.images:
        result.video = outputs.video(_frames(strips, result, request.n_samples), request.seed, "progress", FPS)
    return result


def _frames(strips: list[tuple[int, Image.Image]], result: Result, per_batch: int) -> list[Image.Image]:
    """The previews at the first one's size, each batch followed by its finished pictures."""
    size = strips[0][1].size
    frames = []
    for batch in sorted({batch for batch, _ in strips}):
        frames += [strip.resize(size, Image.BILINEAR) for each, strip in strips if each == batch]
        finished = [image.image for image in result.images if image.index // per_batch == batch]
        if finished:
            frames.append(_side_by_side(finished, size))
    return frames + frames[-1:] * max(0, round(FPS * HOLD_S) - 1)


def _side_by_side(pictures: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """`pictures` in a row filling `size`, as a preview shows a batch."""
    strip = Image.new("RGB", size)
    width = size[0] // len(pictures)
    for place, picture in enumerate(pictures):
        strip.paste(picture.convert("RGB").resize((width, size[1]), Image.LANCZOS), (place * width, 0))
    return strip
