"""A video's run folder: what a stopped video continues from.

- `video.json`: the settings (resolved: seed, model, sizes), the frames made so far, each frame's
  own record (its prompt, seed, schedule values), the estimate, the status and the videos
  written. It is also the JSON beside the video files.
- `frames/NNNNN.png`: the frames made, at the size they were made (each with its settings);
  removed once the video is written, unless `keep_frames`.
- `dream/`: a dream video's dream (its state, to continue it exactly).
- `video.mp4`, `video.gif`, `video.webp`: the videos, the same JSON embedded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from ... import __version__
from ...errors import BadCheckpoint, BadRequest, ModelNotFound
from ...outputs.files import write_text
from ...outputs.metadata import save_png
from .request import OUTPUT_SETTINGS, VideoRequest

RECORD, FRAMES, DREAM = "video.json", "frames", "dream"


class VideoFolder:
    def __init__(self, path: Path, record: dict):
        self.path, self.record = Path(path), record

    @classmethod
    def create(cls, path: Path, request: VideoRequest) -> "VideoFolder":
        """A new video in `path`; what another video left there (its frames, its dream) is removed."""
        for leftover in (FRAMES, DREAM):
            shutil.rmtree(path / leftover, ignore_errors=True)
        folder = cls(path, {"format": 1, "reverie_version": __version__, "settings": request.settings(),
                            "frames_done": 0, "status": "running", "frames": []})
        folder.save()
        return folder

    @classmethod
    def open(cls, path: str | Path) -> "VideoFolder":
        path = Path(path)
        if not (path / RECORD).is_file():
            raise ModelNotFound(f"{path} is not a video's run folder (no {RECORD}); give the folder a video was made in")
        try:
            record = json.loads((path / RECORD).read_text(encoding="utf-8"))
            record["settings"]["mode"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadCheckpoint(f"{path / RECORD} is damaged ({exc}); its frames are kept in {path / FRAMES}") from None
        return cls(path, record)

    @classmethod
    def holding(cls, path: Path | None, request: VideoRequest) -> "VideoFolder | None":
        """The video folder at `path` when it holds `request`'s video (the same settings), else None."""
        if path is None or not (path / RECORD).is_file():
            return None
        try:
            folder = cls.open(path)
        except (ModelNotFound, BadCheckpoint):
            return None
        return folder if folder.record["settings"] == request.settings() else None

    def continued(self, request: VideoRequest) -> VideoRequest:
        """The folder's own request, with what a continuation may change: more frames (an
        animation or a dream goes on; a walk's frames are spread over its stops, so it keeps its
        count) and how the video is written."""
        given = request.model_dump(exclude_unset=True)
        settings = dict(self.record["settings"])
        changes = {name: given[name] for name in OUTPUT_SETTINGS if name in given}
        if "frames" in given and given["frames"] != settings["frames"]:
            if settings["motion"] == "walk":
                raise BadRequest("frames", f"a walk keeps its {settings['frames']} frames (they are spread over its "
                                           "stops); start a new walk for more")
            if given["frames"] < self.frames_done:
                raise BadRequest("frames", f"this video has {self.frames_done} frames already; ask for more")
            changes["frames"] = given["frames"]
        ignored = set(given) - set(changes) - {"mode", "continue_from", "frames", "device", "dtype", "made"}
        if ignored:
            raise BadRequest(sorted(ignored)[0], "a continued video keeps the settings it was made with; it may change "
                                                 f"frames and {', '.join(OUTPUT_SETTINGS)}")
        if self.frames_done and not self.frame_path(self.frames_done - 1).is_file():
            raise BadRequest("continue_from", f"{self.path} no longer has its frames (they were not kept: keep_frames); "
                                              "start a new video")
        return VideoRequest.build(**(settings | changes | {"device": request.device}))

    # -- frames ----------------------------------------------------------------------------
    @property
    def frames_done(self) -> int:
        return int(self.record["frames_done"])

    def frame_path(self, index: int) -> Path:
        return self.path / FRAMES / f"{index:05d}.png"

    def read_frame(self, index: int) -> Image.Image:
        with Image.open(self.frame_path(index)) as picture:
            return picture.convert("RGB")

    def write_frame(self, index: int, picture: Image.Image, record: dict, parameters: str) -> Path:
        """Frame `index`, written whole, and recorded as done (with every frame before it)."""
        path = save_png(picture, self.frame_path(index), parameters, {"format": 1, "frame": record,
                                                                      "settings": self.record["settings"]})
        frames = self.record["frames"][:index] + [record]
        self.record |= {"frames": frames, "frames_done": index + 1}
        self.save()
        return path

    def finished_videos(self) -> list[Path]:
        """The videos of a video finished in this folder (all its frames made and written), else []."""
        videos = [self.path / name for name in self.record.get("videos", [])]
        done = self.record["status"] == "done" and self.frames_done == self.record["settings"]["frames"]
        return videos if done and videos and all(video.is_file() for video in videos) else []

    def save(self, **changes) -> None:
        self.record |= changes
        write_text(self.path / RECORD, json.dumps(self.record, indent=1))

    def drop_frames(self) -> None:
        shutil.rmtree(self.path / FRAMES, ignore_errors=True)

    @property
    def dream_dir(self) -> Path:
        return self.path / DREAM
