"""Videos from a run's pictures: MP4 (H.264, through the ffmpeg that imageio-ffmpeg ships) or GIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadRequest
from .files import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_video_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise BadRequest("video", f"{path.name}: a video is written as .mp4 or .gif")
    return path


def write_video(frames: list[Path | Image.Image], path: str | Path, fps: float = 12.0) -> Path:
    """Write `frames` (files or pictures, all one size) as a video; the file appears complete or not at all."""
    path = check_video_path(path)
    if not frames:
        raise BadRequest("video", "there are no pictures to make a video from (save snapshots with --save-every)")
    pictures = [frame if isinstance(frame, Image.Image) else Image.open(frame) for frame in frames]
    pictures = [picture.convert("RGB") for picture in pictures]
    if path.suffix.lower() == ".gif":
        first, *rest = pictures
        write = lambda partial: first.save(partial, format="GIF", save_all=True, append_images=rest,  # noqa: E731
                                           duration=round(1000 / fps), loop=0)
    else:
        write = lambda partial: _write_mp4(pictures, partial, fps)  # noqa: E731
    return atomic_write(path, write, suffix=".part" + path.suffix)


def _write_mp4(pictures: list[Image.Image], path: Path, fps: float) -> None:
    import imageio_ffmpeg

    width, height = pictures[0].size
    # H.264 in yuv420p needs even sides; pad by one pixel rather than rescale.
    even = (width + width % 2, height + height % 2)
    writer = imageio_ffmpeg.write_frames(str(path), even, fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, quality=8, ffmpeg_log_level="error")
    writer.send(None)
    for picture in pictures:
        canvas = Image.new("RGB", even)
        canvas.paste(picture, (0, 0))
        writer.send(np.ascontiguousarray(np.asarray(canvas)))
    writer.close()
