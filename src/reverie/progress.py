"""Progress events that every long step reports, whoever is listening (a bar, a web page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class ProgressEvent:
    stage: str  # "load", "encode", "denoise", "decode", "image"
    step: int = 0
    total: int = 0
    batch: int = 0  # which batch of n_iter
    batches: int = 1
    message: str = ""
    payload: object = None  # e.g. the finished GeneratedImage for stage "image"


ProgressCallback = Callable[[ProgressEvent], None]
StopCheck = Callable[[], bool]


def no_progress(_event: ProgressEvent) -> None:
    return None


class Interrupted(Exception):
    """Raised inside a run when the caller asked it to stop; finished images are kept."""


def should_never_stop() -> bool:
    return False


OptionalProgress = Optional[ProgressCallback]
