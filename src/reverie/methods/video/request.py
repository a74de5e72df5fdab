"""A video request: a walk through a model's space, a keyframed animation, a dream that moves, or a
video painted again frame by frame."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...errors import BadRequest
from ...request import MAX_SEED, MAX_SIDE, BaseRequest
from .schedules import check_prompt_values, parse_schedule, parse_timeline

MAX_FRAMES = 2000
MOTIONS = ("walk", "animate", "dream", "restyle")
CAMERA = ("zoom", "angle", "translation_x", "translation_y")
SCHEDULES = CAMERA + ("strength", "cfg", "noise", "coherence")
# Settings a continued video may change: how long it goes on (animations and dreams) and how
# its frames are written; everything else is what made the frames already there.
OUTPUT_SETTINGS = ("fps", "formats", "interpolate", "interpolation", "keep_frames", "sound")
# The fields of a diffusion frame's request that a video passes through.
DIFFUSION_FIELDS = ("model", "negative_prompt", "steps", "sampler", "cfg_scale", "width", "height", "upscale",
                    "device", "dtype")
FRAMES_PER_CHARGE = 8  # the studio charges a video one request per this many frames it makes


class VideoRequest(BaseRequest):
    """A video made frame by frame, in a run folder that a stopped video continues from.

    `motion`:
    - `walk`: prompt interpolation and seed travel. `prompts` are the stops (conditioning
      interpolated linearly between them), `seeds` the starting noises (slerped); one prompt with
      several seeds travels between seeds, several prompts with one seed hold the noise. Frame 0
      and the last frame are the pictures the first and last stops make on their own.
    - `animate`: Deforum's 2D animation. `prompts` is a timeline (`0: a forest | 60: a city`);
      each frame is image-to-image from the previous one warped by the camera schedules (`zoom`,
      `angle`, `translation_x/y`: keyframe strings with expressions of `t`), matched to frame 0's
      colours, with `noise` added, at `strength` (0 repeats the warped frame) and `cfg`.
      `cadence` N makes every Nth frame by diffusion and blends warped frames between.
    - `dream`: a CLIP-steered dream that moves with the same camera schedules as it iterates,
      its prompt following the timeline; `dream` holds the dream's own settings (generator,
      guides, prior, cutouts, lr, ...; see DreamRequest).
    - `restyle`: Deforum's video input (or, with `network`, a trained style network painting each
      frame, no prompt). Every `extract_every`th frame of `video_input` (at most `frames` of
      them; all it gives when `frames` is left out) is painted again by image-to-image at
      `strength`, with the timeline's prompt, after `coherence` of the previous painted frame
      (carried along the input's optical `flow` first) is mixed into it and `noise` added. The
      camera is the input's own; the seed is the same for every frame and colours are not
      matched unless `seed_behavior` and `colour_coherence` say otherwise.
    """

    IMAGE_FIELDS = ("init_image",)

    mode: Literal["video"] = "video"
    motion: Literal["walk", "animate", "dream", "restyle"] = "walk"
    prompts: list[str] = Field(default_factory=list)
    negative_prompt: str = ""
    frames: int = Field(24, ge=2, le=MAX_FRAMES)  # frames made, before in-between frames
    fps: float = Field(12.0, ge=1.0, le=60.0)
    formats: list[Literal["mp4", "gif", "webp"]] = Field(default_factory=lambda: ["mp4"])
    interpolate: int = Field(0, ge=0, le=8)  # in-between frames written between two made frames
    # in-between frames: pixels cross-faded, latents slerped and decoded, or moved along the optical flow
    interpolation: Literal["blend", "latent", "flow"] = "blend"
    keep_frames: bool = False  # keep the made frames (frames/) after the video is written
    continue_from: str | None = None  # a video's run folder: make its missing frames

    # Diffusion frames (walk, animate), as a txt2img request takes them.
    model: str | None = None
    steps: int | None = Field(None, ge=1, le=500)
    sampler: str | None = None
    cfg_scale: float | None = Field(None, ge=0.0, le=50.0)
    width: int | None = Field(None, ge=64, le=MAX_SIDE)
    height: int | None = Field(None, ge=64, le=MAX_SIDE)
    upscale: Literal[1, 2, 4] | None = None

    # walk
    seeds: list[int] | None = None
    loop: bool = False  # walk back to the first stop; the last frame is then one step before it

    # animate and dream: the camera, one keyframe string each (see schedules.py)
    zoom: str = "0:(1.0)"
    angle: str = "0:(0)"
    translation_x: str = "0:(0)"  # pixels of the video per frame; + moves the picture right
    translation_y: str = "0:(0)"  # + moves it down
    border: Literal["reflect", "replicate", "wrap"] = "reflect"

    # animate
    strength: str = "0:(0.35)"  # denoising strength of each moved frame (0: kept as it is; Deforum 0.65 = 0.35 here)
    cfg: str | None = None  # a CFG scale schedule; None: cfg_scale (or the model's default) throughout
    noise: str = "0:(0.02)"  # Gaussian noise added to the warped frame, in pixel units (0..1)
    seed_behavior: Literal["iter", "fixed", "random"] = "iter"  # frame i's seed: seed+i, seed, or drawn from (seed, i)
    colour_coherence: Literal["none", "rgb", "hsv", "lab"] = "lab"  # match each frame's colours to frame 0's
    cadence: int = Field(1, ge=1, le=16)
    prompt_blend: bool = True  # between timeline keys, blend the two prompts' conditioning (else cut)
    init_image: Any = None  # animate: frame 0 painted from this picture at strength(0)

    # restyle
    video_input: str | None = None  # the video painted again (a path; the studio's: a video in the user's gallery)
    extract_every: int = Field(1, ge=1, le=100)  # take every Nth frame of the input
    coherence: str = "0:(0)"  # how much of the previous painted frame is mixed into each input frame (0..1)
    flow: Literal["none", "dis", "farneback"] = "dis"  # the previous painted frame carried along the input's motion first
    sound: bool = True  # the input's sound under the MP4 (cut to its length)
    network: str | None = None  # a trained style network paints the frames (no prompt, no diffusion model)

    # dream
    iterations_per_frame: int = Field(20, ge=1, le=1000)
    first_iterations: int = Field(100, ge=1, le=10_000)
    dream: dict = Field(default_factory=dict)  # DreamRequest fields besides prompt, seed and iterations

    @field_validator(*SCHEDULES, mode="before")
    @classmethod
    def _schedule_text(cls, value):
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("video_input", mode="before")
    @classmethod
    def _path_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value: list[int] | None):
        if value is not None:
            if not value:
                raise ValueError("give at least one seed, or leave seeds out")
            bad = [seed for seed in value if not 0 <= seed <= MAX_SEED]
            if bad:
                raise ValueError(f"seeds are whole numbers from 0 to {MAX_SEED}; {bad[0]} is not")
        return value

    @field_validator("formats")
    @classmethod
    def _some_format(cls, value: list[str]):
        if not value:
            raise ValueError("give at least one of mp4, gif, webp")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self):
        if self.continue_from is not None:
            return self  # checked against the run folder's own settings when it is continued
        if not any(prompt.strip() for prompt in self.prompts) and not self.walks_a_gan() and not self.network:
            raise BadRequest("prompts", "give a prompt (a walk: two or more stops, or one with several seeds)")
        for name in SCHEDULES:
            text = getattr(self, name)
            if text is not None:
                parse_schedule(text, name)
        if self.motion == "walk":
            self._check_walk()
        elif self.motion == "restyle":
            self._check_restyle()
        elif self.video_input is not None:
            raise BadRequest("video_input", "only motion restyle paints a video input")
        if self.network is not None:
            self._check_network()
        elif self.motion != "walk":
            check_prompt_values(parse_timeline(self.prompts, "prompts"), self.frames)
            if self.motion == "dream":
                self.dream_request(0)  # the dream's own settings, checked now
        if self.width is not None and self.width % 8 or self.height is not None and self.height % 8:
            raise BadRequest("width" if self.width and self.width % 8 else "height", "must be a multiple of 8")
        return self

    def _check_restyle(self) -> None:
        if not self.video_input:
            raise BadRequest("video_input", "give the video to paint again (an .mp4, .webm, .mov, .gif, ...)")
        if "frames" not in self.model_fields_set:
            self.frames = MAX_FRAMES  # every frame the input gives (fitted_to_input counts them)
        still = {"zoom": 1.0, "angle": 0.0, "translation_x": 0.0, "translation_y": 0.0}
        moved = [name for name in CAMERA if any(value != still[name] for value in
                                                 parse_schedule(getattr(self, name), name).values(self.frames))]
        if moved:
            raise BadRequest(moved[0], "a restyled video moves as its input does; leave the camera schedules out")
        for name, why in (("cadence", "every frame of the input is painted"), ("init_image", "the input's first frame starts it")):
            if getattr(self, name) != type(self).model_fields[name].default:
                raise BadRequest(name, f"not taken by motion restyle: {why}")
        # Its other defaults: one seed for every frame (the least flicker), and no colour matching
        # (an input frame's colours matched to a painted frame's come out false; it is the input's
        # colours that change from frame to frame).
        for name, default in (("seed_behavior", "fixed"), ("colour_coherence", "none")):
            if name not in self.model_fields_set:
                setattr(self, name, default)

    def _check_network(self) -> None:
        """A style network paints a restyle's frames alone: no prompt, no diffusion model."""
        if self.motion != "restyle":
            raise BadRequest("network", "a style network paints a restyle's frames (motion restyle)")
        taken = [name for name in ("prompts", "model") if getattr(self, name)]
        if taken:
            raise BadRequest(taken[0], "a style network paints the frames without a prompt or a diffusion model; "
                                       "leave it out, or leave out network")

    def _check_walk(self) -> None:
        seeds = self.seeds or []
        if len(self.prompts) > 1 and len(seeds) > 1 and len(seeds) != len(self.prompts):
            raise BadRequest("seeds", f"give one seed per prompt ({len(self.prompts)}), or one seed, or one prompt "
                                      f"with several seeds; got {len(seeds)}")
        if self.stop_count() < 2:
            raise BadRequest("prompts", "a walk goes between stops: give two or more prompts, or one prompt with "
                                        "two or more seeds (seeds)")
        if self.init_image is not None:
            raise BadRequest("init_image", "a walk starts from noise; use motion animate to start from a picture")

    # -- what the method reads --------------------------------------------------------------
    def walks_a_gan(self) -> bool:
        """A walk through a trained GAN's latents (`model` names a GAN): its prompts are class names."""
        from ...models.gan_folders import is_gan_reference

        return self.motion == "walk" and is_gan_reference(self.model)

    def stop_count(self) -> int:
        """A walk's stops: one per prompt or seed."""
        return max(len(self.prompts), len(self.seeds or []))

    def walk_stops(self) -> list[tuple[str, int]]:
        """(prompt, seed) of each stop of a walk: a single prompt or seed held at every stop."""
        count = self.stop_count()
        prompts = self.prompts if len(self.prompts) > 1 else (self.prompts or [""]) * count
        seeds = self.seeds if self.seeds and len(self.seeds) > 1 else [(self.seeds or [self.seed])[0]] * count
        return list(zip(prompts, seeds))

    def made_frames(self) -> int:
        """Frames made by diffusion or dreaming (with a cadence, the others are blended)."""
        if self.motion != "animate" or self.cadence == 1:
            return self.frames
        return len(key_frames(self.frames, self.cadence))

    def fitted_to_input(self) -> "VideoRequest":
        """A restyle with the frames its input gives (at most `frames`; two at least) and, when
        `fps` was not given, the rate that makes it last as long as its input: the input's over
        `extract_every`, times the in-between frames' share (at most 60); any other video as it is."""
        if self.motion != "restyle":
            return self
        from ...outputs.video import video_info

        info = video_info(self.video_input, "video_input")
        available = -(-info.frames // self.extract_every)  # frames 0, N, 2N, ... of the input
        if available < 2:
            raise BadRequest("video_input", f"{Path(self.video_input).name} gives {available} frame(s) taking every "
                                            f"{self.extract_every}th; a video needs two: give a longer video or a "
                                            "smaller extract_every")
        updates = {"frames": min(self.frames, available)}
        if "fps" not in self.model_fields_set and info.fps > 0:
            updates["fps"] = round(min(60.0, max(1.0, info.fps / self.extract_every * (self.interpolate + 1))), 3)
        return self.model_copy(update=updates)

    def output_frames(self) -> int:
        """Frames in the written video, in-between frames included."""
        return self.frames + (self.frames - 1) * self.interpolate

    def charge_units(self) -> int:
        return math.ceil(self.made_frames() / FRAMES_PER_CHARGE)

    def frame_fields(self, prompt: str, seed: int) -> dict:
        """A diffusion frame's txt2img request fields (walk, animate): this video's settings."""
        fields = {name: getattr(self, name) for name in DIFFUSION_FIELDS if getattr(self, name) is not None}
        return fields | {"mode": "txt2img", "prompt": prompt, "seed": seed, "n_samples": 1}

    def dream_settings(self) -> dict:
        """What a dream video's DreamVideo is built from: the dream's own fields, the seed, the lengths."""
        return dict(self.dream) | {"seed": self.seed, "first_iterations": self.first_iterations,
                                   "iterations_per_frame": self.iterations_per_frame}

    def dream_request(self, frame: int):
        """The dream a dream video runs, with the timeline's prompt at `frame`."""
        from ..dreaming.request import DreamRequest
        from .schedules import prompt_at

        from .dreamed import VIDEO_OWNED

        taken = (VIDEO_OWNED | {"seed"}).intersection(self.dream)
        if taken:
            raise BadRequest(f"dream.{sorted(taken)[0]}", "is set by the video (prompts, seed, frames, "
                                                         "iterations_per_frame, zoom); leave it out of dream")
        prompt = prompt_at(parse_timeline(self.prompts, "prompts"), frame, False)[0]
        fields = dict(self.dream) | {"prompt": prompt, "seed": self.seed, "iterations": self.first_iterations}
        try:
            return DreamRequest.build(**fields)
        except BadRequest as exc:
            raise BadRequest(f"dream.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None


def key_frames(frames: int, cadence: int) -> list[int]:
    """The frames an animation makes by diffusion: every `cadence`th, and the last."""
    keys = list(range(0, frames, cadence))
    return keys if keys[-1] == frames - 1 else keys + [frames - 1]
