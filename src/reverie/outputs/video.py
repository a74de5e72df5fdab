"""Videos from a run's pictures, and reading them back.

MP4 (H.264 in yuv420p, through the ffmpeg that imageio-ffmpeg ships; frames are streamed to it),
GIF and animated WebP (through Pillow, which keeps the frames until the end). Each can carry a
JSON object of settings: an MP4 as its `comment` tag, a GIF as its comment, a WebP in its XMP
packet (as `reverie:settings`). The file appears whole or not at all (`files.partial_file`).
A video is read back a frame at a time (`iter_frames`); a video input may also be any file
ffmpeg reads (READ_SUFFIXES).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image, ImageSequence

from ..errors import BadRequest
from .files import partial_file

VIDEO_FORMATS = ("mp4", "gif", "webp")
VIDEO_SUFFIXES = tuple(f".{name}" for name in VIDEO_FORMATS)
# What a video input (video_input) may be: the formats reverie writes, and ffmpeg's common others.
READ_SUFFIXES = VIDEO_SUFFIXES + (".mov", ".m4v", ".webm", ".mkv", ".avi")
# The demuxer ffmpeg reads each suffix with: it never guesses a format from a file's contents (a
# playlist named .mp4 would have it open other files), and it opens local files only.
DEMUXERS = {".mp4": "mov", ".m4v": "mov", ".mov": "mov", ".webm": "matroska", ".mkv": "matroska", ".avi": "avi"}
FFMPEG_TIMEOUT_S = 300

# GIF delays are whole centiseconds, and browsers show a delay under 2 cs as 10 cs.
GIF_TICK_MS, GIF_SHORTEST_MS = 10, 20
WEBP_QUALITY = 90
XMP_NAMESPACE = "urn:reverie:video:1"


def check_video_path(path: str | Path) -> Path:
    """`path` when its suffix names a format reverie writes; BadRequest("video") otherwise."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise BadRequest("video", f"{path.name}: a video is written as .mp4, .gif or .webp")
    return path


class VideoWriter:
    """A video written a frame at a time: `with VideoWriter(path, fps, metadata) as video:
    video.add(picture)`. The format follows the suffix of `path`.

    Every frame has the first one's size. H.264 in yuv420p needs even sides, so an MP4 of an odd
    size gets its last column/row repeated once (it reads back one pixel larger). A GIF keeps a
    frame identical to the one before as a longer delay (Pillow merges them), and plays at most
    50 frames a second. When the block ends cleanly the file appears whole; when it raises
    (or no frame was added), nothing is left behind.
    """

    def __init__(self, path: str | Path, fps: float, metadata: dict | None = None):
        self.path = check_video_path(path)
        self.format = self.path.suffix.lower()[1:]
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise BadRequest("fps", f"frames per second must be a positive number, not {fps!r}")
        self.fps = float(fps)
        self.metadata = metadata
        self.comment = None if metadata is None else json.dumps(metadata, sort_keys=True, ensure_ascii=False)
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._kept: list[Image.Image] = []  # GIF and WebP frames, written at the end
        self._ffmpeg = None  # the MP4 writer, started by the first frame
        self._block = None
        self._partial: Path | None = None

    def __enter__(self) -> VideoWriter:
        self._block = partial_file(self.path, suffix=".part" + self.path.suffix)
        self._partial = self._block.__enter__()
        return self

    def add(self, picture: Image.Image) -> None:
        """Append one frame (any mode; written as RGB)."""
        if self._partial is None:
            raise RuntimeError("add frames inside `with VideoWriter(...) as video:`")
        picture = picture.convert("RGB")
        if self._size is None:
            self._size = picture.size
        elif picture.size != self._size:
            raise BadRequest("video", f"frame {self.frames + 1} is {picture.width}x{picture.height} but the first is "
                                      f"{self._size[0]}x{self._size[1]}; a video's frames all have one size")
        if self.format == "mp4":
            self._send(picture)
        else:
            self._kept.append(picture)
        self.frames += 1

    def __exit__(self, kind, error, trace) -> bool:
        block, self._block = self._block, None
        try:
            if kind is not None:
                self._stop_ffmpeg()  # what ffmpeg wrote goes with the partial file
            elif self.frames == 0:
                raise BadRequest("video", "there are no pictures to make a video from")
            else:
                self._finish()
        except BaseException as failure:
            block.__exit__(type(failure), failure, failure.__traceback__)  # removes the partial file
            raise
        finally:
            self._partial = None
        block.__exit__(kind, error, trace)  # renames it into place, or removes it and lets `error` go on
        return False

    # -- the formats ----------------------------------------------------------------------------
    def _send(self, picture: Image.Image) -> None:
        import imageio_ffmpeg

        levels = np.asarray(picture)
        height, width = levels.shape[:2]
        levels = np.pad(levels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        if self._ffmpeg is None:
            extra = ["-movflags", "+faststart"] + (["-metadata", f"comment={self.comment}"] if self.comment else [])
            self._ffmpeg = imageio_ffmpeg.write_frames(
                str(self._partial), (levels.shape[1], levels.shape[0]), fps=self.fps, codec="libx264",
                pix_fmt_out="yuv420p", macro_block_size=1, quality=8, ffmpeg_log_level="error", output_params=extra)
            self._ffmpeg.send(None)
        self._ffmpeg.send(np.ascontiguousarray(levels))

    def _stop_ffmpeg(self) -> None:
        if self._ffmpeg is not None:
            ffmpeg, self._ffmpeg = self._ffmpeg, None
            ffmpeg.close()

    def _finish(self) -> None:
        if self.format == "mp4":
            self._stop_ffmpeg()
            return
        first, *rest = self._kept
        options = dict(save_all=True, append_images=rest, loop=0)
        if self.format == "gif":
            durations = _durations(self.frames, self.fps, GIF_TICK_MS, GIF_SHORTEST_MS)
            if self.comment:
                options["comment"] = self.comment.encode("utf-8")
            first.save(self._partial, format="GIF", duration=durations, **options)
        else:
            durations = _durations(self.frames, self.fps, 1, 1)
            if self.comment:
                options["xmp"] = _xmp_packet(self.comment)
            first.save(self._partial, format="WEBP", duration=durations, quality=WEBP_QUALITY, **options)
        self._kept = []


def _durations(frames: int, fps: float, tick: int, shortest: int) -> list[int]:
    """Each frame's delay in ms, whole `tick`s, rounded so that the running time stays on
    frames / fps (12 fps as a GIF: 80, 90, 80, 80, 90, 80 ms, ...), never under `shortest`."""
    ends = [round(n * 1000 / fps / tick) * tick for n in range(frames + 1)]
    return [max(shortest, end - start) for start, end in zip(ends, ends[1:])]


def _xmp_packet(comment: str) -> bytes:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:reverie="{XMP_NAMESPACE}" reverie:settings={quoteattr(comment)}/>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode("utf-8")


def _xmp_comment(packet: bytes | str) -> str | None:
    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if (value := element.get(f"{{{XMP_NAMESPACE}}}settings")) is not None:
            return value
    return None


def write_video(frames: list[Path | Image.Image], path: str | Path, fps: float = 12.0,
                metadata: dict | None = None) -> Path:
    """Write `frames` (files or pictures, all one size) as a video with `metadata` embedded;
    the file appears complete or not at all."""
    path = check_video_path(path)
    if not frames:
        raise BadRequest("video", "there are no pictures to make a video from")
    with VideoWriter(path, fps, metadata) as video:
        for frame in frames:
            if isinstance(frame, Image.Image):
                video.add(frame)
            else:
                with Image.open(frame) as picture:
                    video.add(picture)
    return path


# -- reading back -------------------------------------------------------------------------------
@dataclass
class VideoInfo:
    """What a video file holds: its frame count, frame rate, size and embedded settings (None
    when it carries none, or a comment that is not a JSON object)."""

    frames: int
    fps: float
    width: int
    height: int
    metadata: dict | None


def video_info(path: str | Path, field: str = "video") -> VideoInfo:
    """The facts of a video: one reverie writes, or (`field` "video_input") any ffmpeg reads. An
    MP4's frames are counted from its packets (exact, without decoding); a GIF's or WebP's frame
    rate is its frame count over its running time. A file that is not a video is BadRequest(field)."""
    path = _existing_video(path, field)
    with _unreadable_refused(path, field):
        if _by_ffmpeg(path):
            import imageio_ffmpeg

            frames = _ffmpeg_frames(path)
            reader = imageio_ffmpeg.read_frames(str(path), input_params=_input_params(path))
            meta = next(reader)
            reader.close()
            width, height = meta["size"]
            return VideoInfo(frames, float(meta["fps"]), width, height, _settings(_mp4_comment(path)))
        with Image.open(path) as video:
            width, height = video.size
            frames = getattr(video, "n_frames", 1)
            running_ms = 0
            for frame in ImageSequence.Iterator(video):
                frame.load()  # a WebP frame's duration is known once it is decoded
                running_ms += frame.info.get("duration", 0)
            video.seek(0)
            comment = video.info.get("comment") if path.suffix.lower() == ".gif" else _xmp_comment(video.info.get("xmp", b""))
    fps = frames * 1000 / running_ms if running_ms else 0.0
    return VideoInfo(frames, fps, width, height, _settings(comment))


def iter_frames(path: str | Path, field: str = "video") -> Iterator[Image.Image]:
    """The frames of a video as RGB pictures, decoded one at a time as they are asked for."""
    path = _existing_video(path, field)
    with _unreadable_refused(path, field):
        if not _by_ffmpeg(path):
            with Image.open(path) as video:
                for frame in ImageSequence.Iterator(video):
                    yield frame.convert("RGB")
            return
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path), input_params=_input_params(path))
        try:
            width, height = next(reader)["size"]
            for frame in reader:
                yield Image.frombytes("RGB", (width, height), frame)
        finally:
            reader.close()


def read_frames(path: str | Path, limit: int | None = None) -> list[Image.Image]:
    """The frames of a video (the first `limit`, or all), as RGB pictures, in memory."""
    return list(itertools.islice(iter_frames(path), limit))


def _existing_video(path: str | Path, field: str = "video") -> Path:
    if field == "video":
        path = check_video_path(path)
    else:
        path = Path(path)
        if path.suffix.lower() not in READ_SUFFIXES:
            raise BadRequest(field, f"{path.name}: give a video file ({', '.join(READ_SUFFIXES)})")
    if not path.is_file():
        raise BadRequest(field, f"there is no video at {path}")
    return path


def _input_params(path: Path) -> list[str]:
    return ["-f", DEMUXERS[path.suffix.lower()], "-protocol_whitelist", "file"]


def _ffmpeg_frames(path: Path) -> int:
    """The frames of a video's first video stream, counted from its packets (copied, not decoded)."""
    import imageio_ffmpeg

    log = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *_input_params(path), "-i", str(path),
                          "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                         capture_output=True, check=True, timeout=FFMPEG_TIMEOUT_S).stderr
    counts = re.findall(rb"frame=\s*(\d+)", log)
    if not counts:
        raise RuntimeError("it has no video stream")
    return int(counts[-1])


def _by_ffmpeg(path: Path) -> bool:
    """GIF and WebP are read by Pillow; every other video by ffmpeg."""
    return path.suffix.lower() not in (".gif", ".webp")


@contextlib.contextmanager
def _unreadable_refused(path: Path, field: str) -> Iterator[None]:
    """A file that ffmpeg or Pillow cannot decode is the caller's mistake: BadRequest(field)."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, StopIteration, subprocess.SubprocessError) as exc:
        if isinstance(exc, subprocess.CalledProcessError):  # ffmpeg's last word, not its command line
            said = (exc.stderr or b"").decode("utf-8", errors="replace").strip().splitlines()
            reason = said[-1] if said else f"ffmpeg ended with {exc.returncode}"
        elif isinstance(exc, subprocess.TimeoutExpired):
            reason = f"ffmpeg took longer than {FFMPEG_TIMEOUT_S} s"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason[:200]
        raise BadRequest(field, f"{path.name} could not be read as a video ({reason})") from None


def has_sound(path: str | Path) -> bool:
    """Whether a video ffmpeg reads has an audio stream (GIF and WebP never do)."""
    import imageio_ffmpeg

    path = Path(path)
    if not _by_ffmpeg(path) or not path.is_file():
        return False
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *_input_params(path), "-i", str(path)],
                           capture_output=True, timeout=FFMPEG_TIMEOUT_S)  # exits 1: no output named
    return re.search(rb"Stream #\S+.*: Audio:", probe.stderr) is not None


def add_sound(video: str | Path, source: str | Path) -> None:
    """Put the first audio stream of `source` under `video` (an MP4 reverie wrote), re-encoded as
    AAC and cut to the video's length; the video's frames and settings are kept as they are."""
    import imageio_ffmpeg

    video, source = Path(video), Path(source)
    with partial_file(video, suffix=".mp4") as partial:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *_input_params(video), "-i", str(video),
                        *_input_params(source), "-i", str(source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                        "-c:a", "aac", "-b:a", "160k", "-shortest", "-map_metadata", "0", "-movflags", "+faststart",
                        str(partial)], capture_output=True, check=True, timeout=FFMPEG_TIMEOUT_S)


def _mp4_comment(path: Path) -> str | None:
    """The `comment` tag, from ffmpeg's ffmetadata listing (where = ; # \\ and line breaks in a
    value are escaped with a backslash)."""
    import imageio_ffmpeg

    listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *_input_params(path), "-i", str(path),
                              "-f", "ffmetadata", "-"],
                             capture_output=True, check=True, timeout=FFMPEG_TIMEOUT_S).stdout.decode("utf-8", errors="replace")
    for line in re.findall(r"(?:[^\\\n]|\\.)+", listing, flags=re.DOTALL):  # lines, escaped breaks kept
        key, _, value = line.partition("=")
        if key == "comment":
            return re.sub(r"\\(.)", r"\1", value, flags=re.DOTALL)
    return None


def _settings(comment: str | bytes | None) -> dict | None:
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="replace")
    try:
        settings = json.loads(comment) if comment else None
    except json.JSONDecodeError:
        return None
    return settings if isinstance(settings, dict) else None
