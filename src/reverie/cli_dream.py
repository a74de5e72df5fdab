"""`reverie dream`: CLIP-steered dreaming from the terminal, with a live score and snapshots.

The first Ctrl-C ends the dream after the current iteration (its picture and state are saved,
so `--continue` can pick it up); a second one stops at once.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn

from .terminal import progress_bar

out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

GENERATOR_HELP = "mini (built-in autoencoder), pixels, vqgan:CKPT (taming YAML beside it), biggan:FOLDER, or a model's autoencoder."
CLIP_HELP = ("A guide: mini (built-in), a `reverie train clip` export folder, an OpenAI CLIP .pt, or ARCH:FILE / a folder "
             "for open_clip. Repeat for an ensemble.")
PRIOR_HELP = ("A diffusion model whose score pulls the dream toward pictures it would make (score distillation): "
              "mini, any --model reference, none, or auto (default: mini with the mini generator, else none).")


class _StopOnCtrlC:
    """First Ctrl-C: finish the iteration and save. Second: stop immediately."""

    def __init__(self):
        self.asked = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        err.print("[yellow]stopping after this iteration (Ctrl-C again to stop now)[/yellow]")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False

    def __call__(self) -> bool:
        return self.asked


def dream(
    prompt: Annotated[Optional[str], typer.Argument(help="`text:weight:stop | ...`; negative weights push away.")] = None,
    continue_from: Annotated[Optional[Path], typer.Option("--continue", help="A dream's run folder to go on with (same or new prompts).")] = None,
    image_prompt: Annotated[Optional[list[str]], typer.Option("--image-prompt", help="FILE[:weight[:stop]]; repeatable.")] = None,
    init_image: Annotated[Optional[Path], typer.Option("--init-image", "-i", help="Start from this picture.")] = None,
    generator: Annotated[Optional[str], typer.Option("--generator", "-g", help=GENERATOR_HELP)] = None,
    clip: Annotated[Optional[list[str]], typer.Option("--clip", help=CLIP_HELP)] = None,
    prior: Annotated[Optional[str], typer.Option("--prior", help=PRIOR_HELP)] = None,
    prior_weight: Annotated[Optional[float], typer.Option("--prior-weight", help="How hard the prior pulls against the guides (default 1).")] = None,
    prior_guidance: Annotated[Optional[float], typer.Option("--prior-guidance", help="The prior's classifier-free guidance scale (default 7.5).")] = None,
    smoothness: Annotated[Optional[float], typer.Option("--smoothness", "--tv", help="Total-variation weight: damps speckle and fine grids (default 0).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", "-W")] = None,
    height: Annotated[Optional[int], typer.Option("--height", "-H")] = None,
    upscale: Annotated[Optional[int], typer.Option("--upscale", help="Save the pictures 1, 2 or 4 times larger with the built-in upscaler (default: for built-in dreams the least factor that shows them at 256 px, 2 at mini's 128; else 1).")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", "-n", help="Iterations to run (default 300; 100 more when continuing).")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Iterations between snapshots.")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Stop after this many iterations without improvement.")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="adam, adamw, adamax, nadam, radam, rmsprop, adagrad or sgd.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the generator's own).")] = None,
    cutouts: Annotated[Optional[int], typer.Option("--cutn", "--cutouts", help="Cutouts per guide per iteration.")] = None,
    cut_power: Annotated[Optional[float], typer.Option("--cut-pow", help=">1 favours small cutouts, <1 large ones.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random flips and noise on cutouts.")] = None,
    noise: Annotated[Optional[float], typer.Option("--noise", help="Largest noise on cutouts (0..1).")] = None,
    truncation: Annotated[Optional[float], typer.Option("--truncation", help="BigGAN truncation (0..1].")] = None,
    zoom: Annotated[Optional[float], typer.Option("--zoom", help="Zoom-in video mode: scale per zoom step, e.g. 1.02.")] = None,
    zoom_every: Annotated[Optional[int], typer.Option("--zoom-every", help="Iterations between zoom steps.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
    outdir: Annotated[Optional[Path], typer.Option("--outdir", "-o", help="Where new dreams get their folders.")] = None,
    video: Annotated[Optional[Path], typer.Option("--video", help="Also write the snapshots as a video (.mp4, .gif or .webp; in the run folder unless a path).")] = None,
):
    """Dream: CLIP steers a generator toward the prompt (VQGAN+CLIP, The Big Sleep)."""
    from .errors import BadRequest
    from .studio import Studio

    given = {
        "prompt": prompt, "image_prompts": image_prompt or None, "init_image": str(init_image) if init_image else None,
        "generator": generator, "guides": clip or None, "prior": prior, "prior_weight": prior_weight,
        "prior_guidance": prior_guidance, "smoothness": smoothness, "width": width, "height": height, "upscale": upscale, "iterations": iterations,
        "save_every": save_every, "patience": patience, "optimizer": optimizer, "lr": lr, "cutouts": cutouts,
        "cut_power": cut_power, "augment": augment, "noise": noise, "truncation": truncation, "zoom": zoom,
        "zoom_every": zoom_every, "seed": seed, "device": device,
    }
    fields = {k: v for k, v in given.items() if v is not None}
    if continue_from is None and prompt is None:
        raise BadRequest("prompt", "give a prompt to dream about, or --continue RUN_DIR to go on with a dream")

    with _StopOnCtrlC() as stop, progress_bar(err, TextColumn("{task.fields[score]}")) as bar:
        task = bar.add_task("loading", total=None, score="")

        def on_progress(event):
            if event.stage == "dream":
                bar.update(task, description="dreaming", completed=event.step, total=event.total, score=event.message)
            elif event.message:
                bar.update(task, description=event.message)

        report = Studio().dream(fields, run_dir=outdir, continue_from=continue_from, video=video,
                                progress=on_progress, should_stop=stop)
    out.print(f"{report.picture}  step {report.step}  ({report.stopped})")
    if report.video:
        out.print(f"video: {report.video}")
    out.print(f"continue with: reverie dream --continue {escape(str(report.run_dir))}")
    if report.stopped == "interrupted":
        raise typer.Exit(130)
