"""What a gallery item is on disk: a picture (one PNG), or a video and its poster.

A video item's row names the video (`images/<user>/<job>-<index>.mp4`, `.gif` or `.webp`); its
poster, the first frame as the video shows it, lies beside it under the same name as a PNG, so
thumbnails, `image:ID` inputs and everything that reads a picture keep working. The gallery's
store, its recovery and `serve --check` all ask this module which files a row owns.
"""

from __future__ import annotations

from pathlib import PurePosixPath

# A video's suffix -> the content type its link is served with.
VIDEO_TYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".webp": "image/webp"}


def is_video(file: str) -> bool:
    """Whether a row's file (relative to images/) is a video; the gallery stores pictures as PNG only."""
    return PurePosixPath(file).suffix.lower() in VIDEO_TYPES


def poster_of(file: str) -> str:
    """The PNG shown for a row's file: the picture itself, or the video's poster beside it."""
    return PurePosixPath(file).with_suffix(".png").as_posix()


def files_of(file: str) -> list[str]:
    """Every file a row owns: its own, and a video's poster."""
    return [file, poster_of(file)] if is_video(file) else [file]
