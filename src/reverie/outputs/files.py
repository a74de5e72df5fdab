"""Where finished pictures go on disk, under what names, and the one way files are written."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from .grid import make_grid

_NUMBERED = re.compile(r"^(\d{5})-")


@contextmanager
def partial_file(path: str | Path, suffix: str = ".part") -> Iterator[Path]:
    """A temporary file beside `path` to write into; when the block ends cleanly it is renamed
    over `path`, so a reader sees the old file or the whole new one, never half, and when the
    block fails it is removed. `suffix` ends the temporary name (some writers pick a format by
    it). For a writer that works in steps (a video streamed frame by frame)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(partial)
        os.chmod(partial, 0o644)  # mkstemp makes it private; these files are the user's to share
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@contextmanager
def partial_folder(folder: str | Path, made: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A temporary folder beside `folder` to fill; when the block ends cleanly it replaces
    `folder` (an older one there is removed first), so a reader finds the old folder, none or
    the whole new one, never half; when the block fails it is removed. For what is written as
    several files at once (an exported model and its marker). `made(folder)`: whether a whole
    one is there already, which another process may have written meanwhile: then it stays and
    the new one is dropped."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    try:
        yield partial
        if made is not None and made(folder):
            return
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(partial, folder)
        except OSError:  # another process's folder took the place between the two steps
            if made is None or not made(folder):
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def one_process_at_a_time(folder: str | Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Run the block while no other process runs one for `folder`: an advisory lock (flock) on
    the file `folder.lock` beside it, which is there only while a block runs, and let go when
    the block ends or its process dies. For what is made once and costs minutes and gigabytes
    (a model's export, its int8 UNet): a deployment's other workers wait, then find it made,
    instead of making it at the same time, each with the memory it takes. Callers take it only
    when the folder is missing, and look again inside: a folder made already costs no write (a
    read-only cache stays readable). `waiting()` is called first when another process holds it.
    No lock where there is no fcntl (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path, waited = folder.with_name(folder.name + ".lock"), False
    while True:
        lock = open(path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None and not waited:
                waiting()
            waited = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # the holder before removed the file it locked: lock the one at `path` now
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before letting go: a waiter then finds its file gone, and tries again
        lock.close()


def atomic_write(path: str | Path, write: Callable[[Path], object], suffix: str = ".part") -> Path:
    """Write `path` through `write(partial)` on a temporary file beside it, then rename it over
    `path`: a reader sees the old file or the whole new one, never half, and a failed write
    leaves nothing behind. `suffix` ends the temporary name (some writers pick a format by it)."""
    with partial_file(path, suffix) as partial:
        write(partial)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe short form of a prompt."""
    words = re.sub(r"[^\w\s-]", "", text.lower()).split()
    return "-".join(words)[:limit].strip("-") or "untitled"


def next_number(outdir: Path, pattern: str = "*.png") -> int:
    """The next free running number in `outdir` (entries are NNNNN-...)."""
    numbers = [int(m.group(1)) for p in outdir.glob(pattern) if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def new_run_folder(parent: Path, title: str) -> Path:
    """A new numbered folder NNNNN-title under `parent` (a dream's run folder)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"{next_number(parent, '*'):05d}-{slug(title)}"
    folder.mkdir()
    return folder


@dataclass
class Outputs:
    """Where a method writes what it makes, as soon as each picture is finished.

    `folder` None writes nothing (the pictures come back in the result only). Pictures are
    `folder/NNNNN-SEED-prompt.png`, with a grid in `folder/grids/` when there are several and
    `grid` is True. A method that keeps a folder of its own per run (a dream) makes a numbered
    one under `folder`, or uses `run_folder` exactly when the caller chose it. `tags` are added
    to every picture's reverie JSON (a grid's cell records its axis values there).
    """

    folder: Path | None = None
    grid: bool = True
    run_folder: Path | None = None
    tags: dict = field(default_factory=dict)

    def __post_init__(self):
        self.folder = Path(self.folder) if self.folder is not None else None
        self.run_folder = Path(self.run_folder) if self.run_folder is not None else None

    def picture(self, image: Image.Image, seed: int, prompt: str, parameters: str, metadata: dict) -> Path | None:
        from .metadata import save_png

        if self.folder is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{next_number(self.folder):05d}-{seed}-{slug(prompt)}.png"
        return save_png(image, path, parameters, metadata | self.tags)

    def grid_of(self, images: list[Image.Image], prompt: str, parameters: str, metadata: dict) -> Path | None:
        """The contact sheet of a request's pictures, when there are several and `grid` is on."""
        if not self.grid or len(images) < 2:
            return None
        return self.sheet(make_grid(images), prompt, parameters, metadata)

    def sheet(self, image: Image.Image, prompt: str, parameters: str, metadata: dict) -> Path | None:
        """Write a finished sheet (a contact sheet, a grid's labelled picture) into `folder/grids/`."""
        from .metadata import save_png

        if self.folder is None:
            return None
        grids = self.folder / "grids"
        grids.mkdir(parents=True, exist_ok=True)
        path = grids / f"{next_number(grids):05d}-grid-{slug(prompt)}.png"
        return save_png(image, path, parameters, metadata)

    def video(self, frames: list[Image.Image], seed: int, what: str, fps: float, suffix: str = "mp4") -> Path | None:
        """Write a video a run makes beside its pictures (a GAN's walk, a progress video) as
        `folder/NNNNN-SEED-WHAT.SUFFIX`; None without a folder."""
        from .video import write_video

        if self.folder is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_video(frames, self.folder / f"{next_number(self.folder, '*'):05d}-{seed}-{what}.{suffix}", fps)

    def run_folder_for(self, title: str) -> Path:
        """The folder a run of its own writes into (made when new)."""
        if self.run_folder is not None:
            self.run_folder.mkdir(parents=True, exist_ok=True)
            return self.run_folder
        return new_run_folder(self.folder or Path("outputs"), title)
