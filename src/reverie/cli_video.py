"""`reverie video walk|animate|restyle|dream|continue`: videos made frame by frame, with a bar of frames.

The first Ctrl-C stops after the current frame (the frames made are kept and written as a
video; `reverie video continue RUN` goes on); a second one stops at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .cli import Cfg, Device, Dtype, Height, Model, Negative, SamplerOpt, Seed, Steps, Upscale, Width, err, out
from .cli_dream import CLIP_HELP, GENERATOR_HELP, PRIOR_HELP, _StopOnCtrlC
from .terminal import progress_bar

video_app = typer.Typer(no_args_is_help=True, help="Videos: walks through a model's space, keyframed animation, videos painted again, dream videos.")

Prompts = Annotated[list[str], typer.Argument(help="Timeline: `0: a forest | 60: a city`, or one keyed prompt per argument ('0: a forest' '60: a city').")]
Frames = Annotated[int, typer.Option("--frames", "-f", help="Frames to make (before in-between frames).")]
Fps = Annotated[float, typer.Option("--fps", help="Frames per second of the video.")]
Formats = Annotated[str, typer.Option("--format", help="mp4, gif, webp, or several: mp4,gif.")]
Interpolate = Annotated[int, typer.Option("--interpolate", help="In-between frames written between two made frames (0..8).")]
Interpolation = Annotated[str, typer.Option("--interpolation", help="In-between frames by blend (pixels cross-faded), latent (slerped latents, decoded) or flow (pixels moved along the optical flow).")]
KeepFrames = Annotated[bool, typer.Option("--keep-frames", help="Keep the made frames (frames/ in the run folder) after the video is written.")]
Outdir = Annotated[Optional[Path], typer.Option("--outdir", "-o", help="Where videos get their run folders (default outputs/videos).")]
# The camera, as Deforum writes it: keyframe strings, expressions of t (the frame number).
Zoom = Annotated[str, typer.Option("--zoom", help='Scale per frame: "0:(1.02)", "0:(1.02+0.02*sin(2*pi*t/20))"; >1 moves in.')]
Angle = Annotated[str, typer.Option("--angle", help='Degrees per frame, counter-clockwise: "0:(0), 30:(1.5)".')]
TranslationX = Annotated[str, typer.Option("--translation-x", "--tx", help="Pixels per frame (of the video); + moves the picture right.")]
TranslationY = Annotated[str, typer.Option("--translation-y", "--ty", help="Pixels per frame (of the video); + moves the picture down.")]
Border = Annotated[str, typer.Option("--border", help="What fills the edges a move uncovers: reflect, replicate or wrap.")]


def _outputs(frames, fps, formats, interpolate, interpolation, keep_frames, seed, device, dtype) -> dict:
    return {"frames": frames, "fps": fps, "formats": [f.strip() for f in formats.split(",") if f.strip()],
            "interpolate": interpolate, "interpolation": interpolation, "keep_frames": keep_frames, "seed": seed,
            "device": device, "dtype": dtype}


def _diffusion(model, negative, width, height, steps, cfg_scale, sampler, upscale) -> dict:
    return {"model": model, "negative_prompt": negative, "width": width, "height": height, "steps": steps,
            "cfg_scale": cfg_scale, "sampler": sampler, "upscale": upscale}


def _camera(zoom, angle, translation_x, translation_y, border) -> dict:
    return {"zoom": zoom, "angle": angle, "translation_x": translation_x, "translation_y": translation_y, "border": border}


@video_app.command("walk")
def walk(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="The stops, in order: two or more prompts, or one with --seeds (a GAN's: class names, or none).")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seed travel: the starting noise of each stop, 1,7,42 (one per prompt, or several for one prompt).")] = None,
    loop: Annotated[bool, typer.Option("--loop", help="Walk back to the first stop (a seamless loop).")] = False,
    frames: Frames = 24, fps: Fps = 12.0, formats: Formats = "mp4", interpolate: Interpolate = 0,
    interpolation: Interpolation = "blend", keep_frames: KeepFrames = False,
    model: Model = None, negative: Negative = "", width: Width = None, height: Height = None, steps: Steps = None,
    cfg_scale: Cfg = None, sampler: SamplerOpt = None, upscale: Upscale = None,
    seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto",
):
    """A walk through the model's space: prompt interpolation and seed travel; frame 0 and the last
    are the pictures the first and last stops make on their own."""
    from .errors import BadRequest

    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise BadRequest("seeds", f"{seeds!r}: give whole numbers separated by commas, e.g. 1,7,42") from None
    fields = {"motion": "walk", "prompts": prompts or [], "seeds": seed_list, "loop": loop,
              **_outputs(frames, fps, formats, interpolate, interpolation, keep_frames, seed, device, dtype),
              **_diffusion(model, negative, width, height, steps, cfg_scale, sampler, upscale)}
    run_video(fields, outdir)


@video_app.command("animate")
def animate(
    prompts: Prompts,
    zoom: Zoom = "0:(1.0)", angle: Angle = "0:(0)", translation_x: TranslationX = "0:(0)",
    translation_y: TranslationY = "0:(0)", border: Border = "reflect",
    strength: Annotated[str, typer.Option("--strength", help='Denoising strength of each moved frame, "0:(0.35)"; 0 keeps it (Deforum writes 1 minus this: its 0.65 is 0.35 here).')] = "0:(0.35)",
    cfg_schedule: Annotated[Optional[str], typer.Option("--cfg-schedule", help='A CFG scale schedule, "0:(4), 60:(7)" (default: --cfg-scale throughout).')] = None,
    noise: Annotated[str, typer.Option("--noise", help='Noise added to each moved frame (pixel units, 0..1): "0:(0.02)".')] = "0:(0.02)",
    seed_behavior: Annotated[str, typer.Option("--seed-behavior", help="Frame i's seed: iter (seed+i), fixed, or random (drawn from seed and i).")] = "iter",
    colour_coherence: Annotated[str, typer.Option("--colour-coherence", "--color-coherence", help="Match each frame's colours to frame 0's: lab, hsv, rgb or none.")] = "lab",
    cadence: Annotated[int, typer.Option("--cadence", help="Paint every Nth frame; the frames between are blended from the moved key frames.")] = 1,
    prompt_blend: Annotated[bool, typer.Option("--prompt-blend/--prompt-cut", help="Between timeline keys, blend the prompts (or cut at the key).")] = True,
    init_image: Annotated[Optional[Path], typer.Option("--init-image", "-i", help="Paint frame 0 from this picture (at the strength of frame 0).")] = None,
    frames: Frames = 48, fps: Fps = 12.0, formats: Formats = "mp4", interpolate: Interpolate = 0,
    interpolation: Interpolation = "blend", keep_frames: KeepFrames = False,
    model: Model = None, negative: Negative = "", width: Width = None, height: Height = None, steps: Steps = None,
    cfg_scale: Cfg = None, sampler: SamplerOpt = None, upscale: Upscale = None,
    seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto",
):
    """Deforum's 2D animation: each frame painted from the previous one, moved by the camera schedules."""
    fields = {"motion": "animate", "prompts": prompts, "strength": strength, "cfg": cfg_schedule, "noise": noise,
              "seed_behavior": seed_behavior, "colour_coherence": colour_coherence, "cadence": cadence,
              "prompt_blend": prompt_blend, "init_image": str(init_image) if init_image else None,
              **_camera(zoom, angle, translation_x, translation_y, border),
              **_outputs(frames, fps, formats, interpolate, interpolation, keep_frames, seed, device, dtype),
              **_diffusion(model, negative, width, height, steps, cfg_scale, sampler, upscale)}
    run_video(fields, outdir)


@video_app.command("restyle")
def restyle(
    video_input: Annotated[Path, typer.Argument(help="The video to paint again: .mp4, .webm, .mov, .mkv, .avi, .gif or .webp.")],
    prompts: Annotated[Optional[list[str]], typer.Argument(help="Timeline: `0: an oil painting | 60: a watercolour` (none with --network).")] = None,
    network: Annotated[Optional[str], typer.Option("--network", help="A trained style network paints each frame instead (`reverie models` lists them; no prompt, no --model).")] = None,
    strength: Annotated[str, typer.Option("--strength", help='Denoising strength of each frame, "0:(0.5)": 0 keeps the input, 1 paints it anew.')] = "0:(0.35)",
    coherence: Annotated[str, typer.Option("--coherence", help='How much of the previous painted frame (carried along the input\'s motion: --flow) is mixed into each input frame, 0..1: "0:(0.3)". More is steadier.')] = "0:(0)",
    flow: Annotated[str, typer.Option("--flow", help="Carry the previous painted frame along the input's optical flow before mixing it in: dis, farneback or none (ghosts where the input moves).")] = "dis",
    sound: Annotated[bool, typer.Option("--sound/--no-sound", help="Put the input's sound under the MP4 (cut to its length).")] = True,
    extract_every: Annotated[int, typer.Option("--every", help="Take every Nth frame of the input (its frame rate is divided by N).")] = 1,
    cfg_schedule: Annotated[Optional[str], typer.Option("--cfg-schedule", help='A CFG scale schedule, "0:(4), 60:(7)" (default: --cfg-scale throughout).')] = None,
    noise: Annotated[str, typer.Option("--noise", help='Noise added to each input frame (pixel units, 0..1): "0:(0.02)".')] = "0:(0.02)",
    seed_behavior: Annotated[str, typer.Option("--seed-behavior", help="Frame i's seed: fixed (one for every frame: the least flicker), iter (seed+i) or random.")] = "fixed",
    colour_coherence: Annotated[str, typer.Option("--colour-coherence", "--color-coherence", help="Match each input frame's colours to the first painted frame's before painting: none, lab, hsv or rgb.")] = "none",
    prompt_blend: Annotated[bool, typer.Option("--prompt-blend/--prompt-cut", help="Between timeline keys, blend the prompts (or cut at the key).")] = True,
    frames: Annotated[Optional[int], typer.Option("--frames", "-f", help="At most this many frames (default: all the input gives, up to 2000).")] = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Frames per second of the video (default: as long as the input: its rate over --every, times in-between frames + 1).")] = None,
    formats: Formats = "mp4", interpolate: Interpolate = 0, interpolation: Interpolation = "blend",
    keep_frames: KeepFrames = False,
    model: Model = None, negative: Negative = "", width: Width = None, height: Height = None, steps: Steps = None,
    cfg_scale: Cfg = None, sampler: SamplerOpt = None, upscale: Upscale = None,
    seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto",
):
    """Deforum's video input: every frame of a video painted again by image-to-image, with a prompt timeline."""
    fields = {"motion": "restyle", "video_input": str(video_input), "prompts": prompts or [], "network": network,
              "strength": strength,
              "coherence": coherence, "flow": flow, "sound": sound, "extract_every": extract_every, "cfg": cfg_schedule, "noise": noise,
              "seed_behavior": seed_behavior, "colour_coherence": colour_coherence, "prompt_blend": prompt_blend,
              **_outputs(frames, fps, formats, interpolate, interpolation, keep_frames, seed, device, dtype),
              **_diffusion(model, negative, width, height, steps, cfg_scale, sampler, upscale)}
    run_video(fields, outdir)


@video_app.command("dream")
def dream(
    prompts: Annotated[list[str], typer.Argument(help="Timeline of dream prompts (`text:weight | ...` each): '0: a forest | 40: a city'.")],
    zoom: Zoom = "0:(1.02)", angle: Angle = "0:(0)", translation_x: TranslationX = "0:(0)",
    translation_y: TranslationY = "0:(0)", border: Border = "reflect",
    iterations_per_frame: Annotated[int, typer.Option("--iterations-per-frame", help="Dream iterations between two frames.")] = 20,
    first_iterations: Annotated[int, typer.Option("--first-iterations", help="Iterations before the first frame.")] = 100,
    generator: Annotated[Optional[str], typer.Option("--generator", "-g", help=GENERATOR_HELP)] = None,
    clip: Annotated[Optional[list[str]], typer.Option("--clip", help=CLIP_HELP)] = None,
    prior: Annotated[Optional[str], typer.Option("--prior", help=PRIOR_HELP)] = None,
    cutouts: Annotated[Optional[int], typer.Option("--cutn", "--cutouts", help="Cutouts per guide per iteration.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the generator's own).")] = None,
    frames: Frames = 48, fps: Fps = 12.0, formats: Formats = "mp4", interpolate: Interpolate = 0,
    interpolation: Interpolation = "blend", keep_frames: KeepFrames = False,
    seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto",
):
    """A dream that zooms, turns and pans as it iterates, its prompt following the timeline (VQGAN+CLIP's zoom videos)."""
    dream_settings = {"generator": generator, "guides": clip or None, "prior": prior, "cutouts": cutouts, "lr": lr}
    fields = {"motion": "dream", "prompts": prompts, "iterations_per_frame": iterations_per_frame,
              "first_iterations": first_iterations,
              "dream": {key: value for key, value in dream_settings.items() if value is not None},
              **_camera(zoom, angle, translation_x, translation_y, border),
              **_outputs(frames, fps, formats, interpolate, interpolation, keep_frames, seed, device, dtype)}
    run_video(fields, outdir)


@video_app.command("continue")
def continue_video(
    run_dir: Annotated[Path, typer.Argument(help="The run folder of a stopped video (or one to make longer).")],
    frames: Annotated[Optional[int], typer.Option("--frames", "-f", help="Go on to this many frames (an animation or a dream).")] = None,
    fps: Annotated[Optional[float], typer.Option("--fps")] = None,
    formats: Annotated[Optional[str], typer.Option("--format", help="mp4, gif, webp, or several.")] = None,
    interpolate: Annotated[Optional[int], typer.Option("--interpolate")] = None,
    keep_frames: Annotated[Optional[bool], typer.Option("--keep-frames/--drop-frames")] = None,
    device: Device = "auto",
):
    """Make a stopped video's missing frames (the same frames it would have made), or go on longer."""
    fields = {"continue_from": str(run_dir), "frames": frames, "fps": fps, "interpolate": interpolate,
              "keep_frames": keep_frames, "device": device,
              "formats": [f.strip() for f in formats.split(",")] if formats else None}
    run_video(fields, None)


def run_video(fields: dict, outdir: Path | None) -> None:
    """Run a video request with a bar of frames and one of the current frame's steps."""
    from .studio import Studio, make_request

    request = make_request({key: value for key, value in fields.items() if value is not None} | {"mode": "video"})
    with _StopOnCtrlC() as stop, progress_bar(err) as bar:
        frames = bar.add_task("frames", total=None if request.continue_from or request.motion == "restyle" else request.frames)
        steps = bar.add_task("loading", total=None)

        def on_progress(event):
            if event.stage == "frame":
                bar.update(frames, completed=event.step, total=event.total, description=event.message)
            elif event.stage in ("denoise", "dream"):
                bar.update(steps, description="steps", completed=event.step, total=event.total)
            elif event.stage == "video":
                bar.update(steps, description=event.message, completed=event.step, total=event.total)
            elif event.stage == "estimate":
                err.print(f"[dim]{escape(event.message)}[/dim]")
            elif event.message:
                bar.update(steps, description=event.message)

        result = Studio().run(request, outdir=outdir or Path("outputs/videos"), progress=on_progress, should_stop=stop)
    for video in result.videos:
        out.print(f"video: {video}", markup=False, highlight=False)
    out.print(f"{result.frames} frames in {result.run_dir}", markup=False, highlight=False)
    if result.interrupted:
        err.print(f"[yellow]stopped after {result.frames} frames: continue with "
                  f"reverie video continue {escape(str(result.run_dir))}[/yellow]")
        raise typer.Exit(130)
