"""A user's own LoRAs: the folder a run finds them in (besides the models folder) and saves the
ones it trains into.

The studio keeps each user's trained LoRAs in `<data>/loras/<user_id>/` and runs every job of
that user inside `own_loras(folder)`: `models.lora.find_lora` then looks there before the shared
models folder, and a LoRA training run saves there. A job of another user runs with its own
folder, so it can neither list nor use them, whatever its prompt says. Outside the studio (the
command line, the Python API) there is no own folder: LoRAs come from the models folder, and a
trained one is saved into `models/Lora/`.

It is a context variable, not a request field, because where a user's files live is the server's
business: a request never names a folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

_OWN_FOLDER: ContextVar[Path | None] = ContextVar("reverie_own_lora_folder", default=None)


def own_lora_folder() -> Path | None:
    """The folder of the current user's own LoRAs, or None outside a studio job."""
    return _OWN_FOLDER.get()


@contextmanager
def own_loras(folder: str | Path | None) -> Iterator[None]:
    """Run the block with `folder` as the user's own LoRA folder (None: none)."""
    token = _OWN_FOLDER.set(Path(folder) if folder is not None else None)
    try:
        yield
    finally:
        _OWN_FOLDER.reset(token)


def trained_lora_folder() -> Path:
    """Where a LoRA trained now is saved: the user's own folder in a studio job, else models/Lora/."""
    from .registry import models_dir

    return own_lora_folder() or models_dir() / "Lora"
