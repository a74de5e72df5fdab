"""Optical flow between two frames of a video (OpenCV), and a picture carried along it.

A restyle mixes its previous painted frame into the next input frame; carried along the input's
own motion first, the painted details land where the input's things moved to, instead of
staying behind as ghosts. This is Deforum's hybrid video "optical flow" motion.

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
