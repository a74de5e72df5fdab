"""Optical flow between two frames of a video (OpenCV), a picture carried along it, and frames
in between two made along it.

A restyle mixes its previous painted frame into the next input frame; carried along the input's
own motion first, the painted details land where the input's things moved to, instead of
staying behind as ghosts. This is Deforum's hybrid video "optical flow" motion.

An in-between frame at time w (0: the first frame, 1: the second) takes each pixel from both
frames, each carried along the flow to time w, and blends them by nearness (the flows from time
w are approximated from the two frames' flows as Super SloMo's first estimate does). It moves
things where a cross-fade shows both places at half strength; where one frame hides what the
other shows, it blurs.

`dis` is OpenCV's DIS flow at its medium preset (Deforum's default), `farneback` Farnebäck's
polynomial-expansion flow. Both are classical (no model to load), deterministic, and take a few
milliseconds at a frame's working size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FLOWS = ("none", "dis", "farneback")


def backward_flow(before: Image.Image, after: Image.Image, method: str) -> np.ndarray:
    """For each pixel of `after`, where it was in `before`: an [H, W, 2] array of (dx, dy)."""
    import cv2

    first, second = (np.asarray(picture.convert("L")) for picture in (after, before))
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(first, second, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(first, second, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                            poly_n=5, poly_sigma=1.2, flags=0)
    raise ValueError(f"unknown optical flow {method!r}; use one of {', '.join(FLOWS[1:])}")


def carried(picture: Image.Image, flow: np.ndarray) -> Image.Image:
    """`picture` (a frame of `before`'s time) moved along a backward flow to `after`'s time:
    each pixel taken from where the flow says it was (bilinear; edges reflected)."""
    import cv2

    height, width = flow.shape[:2]
    columns, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    moved = cv2.remap(np.asarray(picture.convert("RGB")), columns + flow[..., 0], rows + flow[..., 1],
                      interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return Image.fromarray(moved)


def inbetweens(first: Image.Image, second: Image.Image, weights: list[float], method: str = "dis") -> list[Image.Image]:
    """Frames at each time w of `weights` (0 < w < 1) between `first` and `second`, along their flow."""
    forward = backward_flow(second, first, method)   # each pixel of `first`: where it is in `second`
    backward = backward_flow(first, second, method)  # each pixel of `second`: where it was in `first`
    made = []
    for w in weights:
        to_first = -(1 - w) * w * forward + w * w * backward
        to_second = (1 - w) * (1 - w) * forward - w * (1 - w) * backward
        a, b = (np.asarray(carried(picture, flow), dtype=np.float32)
                for picture, flow in ((first, to_first), (second, to_second)))
        made.append(Image.fromarray(np.round((1 - w) * a + w * b).clip(0, 255).astype(np.uint8)))
    return made
