"""Progress: what every long step reports, whoever is listening (a bar, a web page), and how a
listener asks the work to stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image


@dataclass
class ProgressEvent:
    stage: str  # "load", "encode", "denoise", "decode", "upscale", "rerank", "dream", "image"
    step: int = 0
    total: int = 0
    batch: int = 0  # which batch of n_iter
    batches: int = 1
    message: str = ""
    payload: object = None  # the finished GeneratedImage, for stage "image"
    preview: Image.Image | None = None  # a finished preview picture, when the listener asked for previews


ProgressCallback = Callable[[ProgressEvent], None]
StopCheck = Callable[[], bool]


def no_progress(_event: ProgressEvent) -> None:
    return None


def should_never_stop() -> bool:
    return False


class Interrupted(Exception):
    """Raised inside a run when the caller asked it to stop; finished images are kept."""


@dataclass
class Progress:
    """What a method is given to report to: `progress(event)`; `stop_requested()`; and whether the
    listener wants live preview pictures (they cost a little, so only a watcher asks)."""

    report: ProgressCallback = no_progress
    should_stop: StopCheck = should_never_stop
    previews: bool = False

    def __call__(self, event: ProgressEvent) -> None:
        self.report(event)

    def stop_requested(self) -> bool:
        return bool(self.should_stop())
