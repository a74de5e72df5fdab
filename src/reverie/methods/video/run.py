"""The video method: frames made one by one into a run folder, then written as videos.

1. A new video gets a run folder (`outputs`), a continued one reads its own (`continue_from`)
   and goes on from the frames it has.
2. The frame maker: a walk or an animation on a diffusion model (`Painter`), or a dream.
3. Before the first frame: memory (one frame's peak, the upscaler's, the GIF/WebP frames held)
   is checked and refused when it cannot fit; the time is estimated from a timed UNet step
   times the steps the frames take, and reported.
4. Each frame is written as it is finished (a stop keeps it); then the videos: frames enlarged
   as the model shows its pictures, in-between frames added, the settings embedded.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from ... import __version__
from ...device import check_fits, estimate_peak_bytes, pick_device
from ...errors import BadRequest
from ...models.cache import ModelCache
from ...outputs.files import Outputs
from ...outputs.metadata import a1111_parameters
from ...outputs.video import VideoWriter, add_sound, has_sound, read_frames
from ...progress import Interrupted, Progress, ProgressEvent
from ...result import GeneratedImage, Result
from ..diffusion.run import sdxl_memory
from ..upscale.pictures import check_upscale_fits, upscaled
from .folder import VideoFolder
from .painter import Painter
from .request import VideoRequest
from .schedules import parse_timeline


@dataclass
class VideoResult(Result):
    run_dir: Path | None = None
    videos: list[Path] = field(default_factory=list)
    frames: int = 0  # frames made so far (all of them unless interrupted)
    estimate: dict = field(default_factory=dict)


def run(request: VideoRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> VideoResult:
    if request.continue_from is not None:
        folder = VideoFolder.open(request.continue_from)
        request = folder.continued(request).fitted_to_input()
    else:
        request = request.with_seed().fitted_to_input()
        # A folder given exactly (the studio's job folder) that holds this very video goes on from
        # its frames: a job stopped with the server resumes where it was.
        folder = VideoFolder.holding(outputs.run_folder, request) or \
            VideoFolder.create(outputs.run_folder_for(_title(request)), request)
        finished = folder.finished_videos()
        if finished:
            return _finished(request, folder, finished, progress)  # a job that ran again: its video was made
    started = time.perf_counter()
    maker = _frame_maker(request, models, progress, folder)
    estimate = _estimate(request, maker)
    folder.save(settings=request.settings(), estimate=estimate, status="running", made_with=maker.settings)
    progress(ProgressEvent("estimate", message=estimate["message"]))

    result = VideoResult(request=request, run_dir=folder.path, estimate=estimate)
    start = maker.resume_point(folder.frames_done)
    progress(ProgressEvent("frame", start, request.frames, message=f"frame {start + 1} of {request.frames}"))
    try:
        for index, picture, record in maker.frames(start, progress):
            folder.write_frame(index, picture, record, _parameters(request, record))
            preview = picture if progress.previews else None
            progress(ProgressEvent("frame", index + 1, request.frames, message=f"frame {index + 1} of {request.frames}",
                                   preview=preview))
            maker.after_frame(index)
            if progress.stop_requested() and index + 1 < request.frames:
                raise Interrupted()
    except (Interrupted, KeyboardInterrupt):
        result.interrupted = True
    result.frames = folder.frames_done
    if result.frames:
        result.videos = _write_videos(request, folder, maker, models, progress)
        poster = maker.shown([folder.read_frame(0)])[0]  # the first frame as the video shows it
        result.images = [GeneratedImage(poster, request.seed, 0, _metadata(request, folder), _parameters(request, {}),
                                        path=result.videos[0])]
        progress(ProgressEvent("image", 1, 1, payload=result.images[0]))
    complete = not result.interrupted and folder.frames_done == request.frames
    folder.save(status="done" if complete else "stopped", videos=[p.name for p in result.videos])
    if complete and not request.keep_frames:
        folder.drop_frames()
    result.timings["generate_s"] = time.perf_counter() - started
    return result


def _finished(request: VideoRequest, folder: VideoFolder, videos: list[Path], progress: Progress) -> VideoResult:
    """The videos a run in this folder finished before (its frames may be gone), reported again."""
    [poster] = read_frames(videos[0], limit=1)
    image = GeneratedImage(poster, request.seed, 0, _metadata(request, folder), _parameters(request, {}), path=videos[0])
    progress(ProgressEvent("image", 1, 1, payload=image))
    return VideoResult(request=request, images=[image], run_dir=folder.path, videos=videos, frames=folder.frames_done)


# -- the frame makers ----------------------------------------------------------------------
@dataclass
class FrameMaker:
    """What the method asks of a walk, an animation, a GAN walk or a dream video."""

    frames: Callable[[int, Progress], Iterator[tuple[int, Image.Image, dict]]]  # (index, frame, record) from a frame on
    shown: Callable[[list[Image.Image]], list[Image.Image]]  # frames as the video shows them (enlarged)
    settings: dict  # what the frames are made with, for the record
    shown_size: tuple[int, int]
    resume_point: Callable[[int], int] = lambda done: done  # the first frame to make when `done` exist
    after_frame: Callable[[int], None] = lambda index: None  # after a frame is written (a dream saves)
    unet_steps: int | None = None  # the denoising steps of every frame, for the time estimate
    seconds_per_step: float | None = None
    vae: object = None  # the autoencoder latent in-between frames go through (None: blends)
    peak_bytes: int = 0  # one frame's peak memory


def _frame_maker(request: VideoRequest, models: ModelCache, progress: Progress, folder: VideoFolder) -> FrameMaker:
    if request.motion == "dream":
        return _dream_maker(request, models, progress, folder)
    if request.walks_a_gan():
        return _gan_maker(request, models, progress)
    if request.network is not None:
        return _network_maker(request, models, progress, folder)
    from ...models.gan_folders import is_gan_reference

    if is_gan_reference(request.model):
        raise BadRequest("motion", "a GAN draws from its latents and cannot paint a frame from the one before; walk "
                                   "through its seeds (motion walk) or dream with it (motion dream, dream.generator)")
    first_prompt = request.walk_stops()[0][0] if request.motion == "walk" else parse_timeline(request.prompts)[0][1]
    restyle = request.motion == "restyle"
    if restyle:
        from .restyle import Restyle, input_aspect_ratio
    painter = Painter.load(request, first_prompt, models, progress,
                           aspect_ratio=input_aspect_ratio(request) if restyle else None)
    if restyle:
        maker = Restyle(request, painter, folder.read_frame)
        resume_point = lambda done: done  # noqa: E731  each frame needs only the one before it
    elif request.motion == "walk":
        from .walk import Walk

        maker = Walk(request, painter)
        resume_point = lambda done: done  # noqa: E731  every frame stands alone
    else:
        from .animate import Animation

        maker = Animation(request, painter, folder.read_frame)
        resume_point = maker.resume_point
    width, height = painter.size
    components = painter.components
    peak = estimate_peak_bytes(width=width, height=height, batch=1, latent_channels=components.vae.config.latent_channels,
                               vae_scale=components.vae_scale_factor, dtype=painter.dtype,
                               vae_tiling=bool(painter.request.vae_tiling), **sdxl_memory(components, painter.dtype))
    check_upscale_fits((width, height), painter.factor, painter.device)
    return FrameMaker(maker.frames, lambda pictures: painter.shown(pictures, models, progress), painter.settings(),
                      (width * painter.factor, height * painter.factor), resume_point, unet_steps=maker.unet_steps(),
                      seconds_per_step=painter.seconds_per_step(), vae=components.vae, peak_bytes=peak)


def _network_maker(request: VideoRequest, models: ModelCache, progress: Progress, folder: VideoFolder) -> FrameMaker:
    """A restyle painted by a trained style network: frames shown as they are made."""
    from .restyle import NetworkRestyle

    progress(ProgressEvent("load", message=f"loading {request.network}"))
    maker = NetworkRestyle(request, models, pick_device(request.device), folder.read_frame)
    width, height = maker.size
    return FrameMaker(maker.frames, lambda pictures: pictures, {"network": request.network, "working_size": [width, height]},
                      maker.size, peak_bytes=NETWORK_BYTES_PER_PIXEL * width * height)


# A style network's peak per frame pixel: its widest activations (64 channels at a quarter of the
# pixels, 32 at half, 16 at full, float32) with room for the input, output and the flow's arrays.
NETWORK_BYTES_PER_PIXEL = 1024


def _gan_maker(request: VideoRequest, models: ModelCache, progress: Progress) -> FrameMaker:
    """A walk through a trained GAN's latents, shown `upscale` times larger (default 1)."""
    from .walk import GANWalk

    device = pick_device(request.device)
    progress(ProgressEvent("load", message=f"loading {request.model}"))
    walk = GANWalk(request, models, device)
    factor = request.upscale or 1
    width, height = walk.size
    check_upscale_fits((width, height), factor, device)
    return FrameMaker(walk.frames, lambda pictures: upscaled(pictures, factor, models, progress),
                      {"model": request.model, "working_size": [width, height], "upscale": factor},
                      (width * factor, height * factor))


def _dream_maker(request: VideoRequest, models: ModelCache, progress: Progress, folder: VideoFolder) -> FrameMaker:
    """A dream video: the Dream's own state (in the run folder's dream/) says which frame is next."""
    from .animate import camera_moves
    from .dreamed import DreamVideo
    from .motion import is_identity, warp

    device = pick_device(request.device)
    dream_request = request.dream_request(0)
    size, factor = (dream_request.width, dream_request.height), dream_request.upscale
    moves = camera_moves(request, size, factor)

    def move(index: int):
        if is_identity(moves[index]):
            return None
        return lambda picture: warp(picture, moves[index], request.border)

    progress(ProgressEvent("load", message="loading the generator and guides"))
    video = DreamVideo(request.dream_settings(), parse_timeline(request.prompts), move, folder.dream_dir, device, models,
                       blend=request.prompt_blend)
    check_upscale_fits(size, factor, device)

    def frames(start: int, progress: Progress):
        for index in range(start, request.frames):
            picture = video.frame(index, progress)
            yield index, picture, {"index": index, "prompt": video.prompt_for(index), "seed": request.seed}

    return FrameMaker(frames, lambda pictures: upscaled(pictures, factor, models, progress),
                      {"generator": dream_request.generator, "working_size": list(size), "upscale": factor},
                      (size[0] * factor, size[1] * factor), resume_point=lambda done: video.next_frame,
                      after_frame=lambda index: video.save())


# -- before the first frame ----------------------------------------------------------------
def _estimate(request: VideoRequest, maker: FrameMaker) -> dict:
    """Memory checked (refused before any work when it cannot fit) and time estimated."""
    width, height = maker.shown_size
    held = sum(fmt != "mp4" for fmt in request.formats) * request.output_frames() * width * height * 3
    device = pick_device(request.device)
    check_fits(maker.peak_bytes + held, device, "make fewer or smaller frames (frames, width/height, interpolate), "
                                                "or write mp4 only (formats): GIF and WebP hold every frame in memory")
    estimate = {"frames": request.frames, "made_frames": request.made_frames(), "output_frames": request.output_frames(),
                "peak_gib": round((maker.peak_bytes + held) / 2**30, 2)}
    parts = [f"{request.frames} frames"]
    if maker.unet_steps is not None:
        seconds = maker.unet_steps * maker.seconds_per_step
        estimate |= {"unet_steps": maker.unet_steps, "seconds_per_step": round(maker.seconds_per_step, 4),
                     "seconds": round(seconds, 1)}
        parts.append(f"{maker.unet_steps} UNet steps at {maker.seconds_per_step:.2f} s: about {_duration(seconds)}")
    elif request.motion == "dream":
        iterations = request.first_iterations + (request.frames - 1) * request.iterations_per_frame
        estimate["iterations"] = iterations
        parts.append(f"{iterations} dream iterations")
    parts.append(f"at most {estimate['peak_gib']:.1f} GiB")
    estimate["message"] = ", ".join(parts)
    return estimate


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


# -- writing the videos --------------------------------------------------------------------
def _write_videos(request: VideoRequest, folder: VideoFolder, maker: FrameMaker, models: ModelCache,
                  progress: Progress) -> list[Path]:
    """Every format asked for, from the frames made so far: enlarged as shown, in-between frames added."""
    paths = [folder.path / f"video.{fmt}" for fmt in request.formats]
    metadata = _metadata(request, folder)
    total = (folder.frames_done - 1) * (request.interpolate + 1) + 1
    with ExitStack() as stack:
        writers = [stack.enter_context(VideoWriter(path, request.fps, metadata)) for path in paths]
        written, previous = 0, None
        for index in range(folder.frames_done):
            frame = folder.read_frame(index)
            between = _inbetweens(previous, frame, request, maker) if previous is not None else []
            for picture in maker.shown(between + [frame]):
                for writer in writers:
                    writer.add(picture)
                written += 1
            progress(ProgressEvent("video", written, total, message="writing the video"))
            previous = frame
    if request.motion == "restyle" and request.sound and "mp4" in request.formats and has_sound(request.video_input):
        progress(ProgressEvent("video", written, total, message="adding the input's sound"))
        add_sound(folder.path / "video.mp4", request.video_input)
    return paths


def _inbetweens(a: Image.Image, b: Image.Image, request: VideoRequest, maker: FrameMaker) -> list[Image.Image]:
    """`request.interpolate` frames between a and b: cross-faded pixels, slerped latents decoded, or
    pixels moved along the optical flow."""
    from .motion import blend

    count = request.interpolate
    weights = [(k + 1) / (count + 1) for k in range(count)]
    if not count:
        return []
    if request.interpolation == "flow":
        from .flow import inbetweens

        return inbetweens(a, b, weights)
    if request.interpolation == "blend" or maker.vae is None:
        return [blend(a, b, w) for w in weights]
    return latent_inbetweens(a, b, weights, maker.vae)


@torch.no_grad()
def latent_inbetweens(a: Image.Image, b: Image.Image, weights: list[float], vae) -> list[Image.Image]:
    from ...pixels import to_pictures, to_tensor
    from ..gan.latents import slerp

    param = next(vae.parameters())
    pixels = torch.cat([to_tensor(a), to_tensor(b)]).to(param.device, param.dtype) * 2 - 1
    latents = vae.encode(pixels).latent_dist.mean.float()
    flat = latents.flatten(1)
    mixed = torch.stack([slerp(flat[:1], flat[1:], w)[0] for w in weights]).view(len(weights), *latents.shape[1:])
    decoded = vae.decode(mixed.to(param.dtype)).sample.float()
    return to_pictures((decoded / 2 + 0.5).clamp(0, 1))


# -- what the files record -----------------------------------------------------------------
def _title(request: VideoRequest) -> str:
    """The run folder's name: the motion and the first prompt's words (a timeline's first key left out)."""
    if request.motion == "walk":
        first = request.walk_stops()[0][0] or Path(str(request.model)).name
    elif request.network is not None:
        first = Path(request.network).name
    else:
        first = parse_timeline(request.prompts)[0][1].split("|")[0]
    return f"{request.motion} {first}"


def _metadata(request: VideoRequest, folder: VideoFolder) -> dict:
    record = folder.record
    return {"format": 1, "reverie_version": __version__, "seed": request.seed, "index": 0,
            "settings": request.settings(), "made_with": record.get("made_with", {}),
            "frames": folder.frames_done, "fps": request.fps, "video": True}


def _parameters(request: VideoRequest, record: dict) -> str:
    prompt = record.get("prompt") or (request.prompts[0] if request.prompts else "")
    return a1111_parameters(prompt, request.negative_prompt, {
        "Seed": record.get("seed", request.seed), "Video": request.motion, "Frame": record.get("index"),
        "Frames": request.frames, "FPS": f"{request.fps:g}"})
