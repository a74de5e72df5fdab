"""`reverie grid PROMPT --x cfg=3,5,7 --y sampler=euler,dpmpp_2m --z steps=10,20`: A1111's X/Y/Z plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import Cfg, Device, Dtype, Height, Model, Negative, Outdir, SamplerOpt, Seed, Steps, Strength, Upscale, Width, err, out
from .terminal import progress_bar

AXIS_HELP = ("NAME=VALUE,VALUE,...: cfg, steps, sampler, seed, strength, model, style, prompt (search/replace: "
             "the first value is the words replaced), or a setting by its field name (eta, width, ...). "
             'A value with a comma is quoted ("a, b"); numbers take ranges: 1-5, 1-10 (+3), 0-1 [5].')


def grid(
    prompt: Annotated[str, typer.Argument(help="The base prompt every cell starts from.")],
    x: Annotated[Optional[str], typer.Option("--x", "-x", help="The axis across: " + AXIS_HELP)] = None,
    y: Annotated[Optional[str], typer.Option("--y", "-y", help="The axis down.")] = None,
    z: Annotated[Optional[str], typer.Option("--z", "-z", help="One grid per value of this axis.")] = None,
    n_samples: Annotated[int, typer.Option("--n-samples", "-n", help="Pictures per cell (seed, seed+1, ...).")] = 1,
    init_image: Annotated[Optional[Path], typer.Option("--init-image", "-i", help="Start every cell from this picture (img2img; compare strengths with --x strength=0.3,0.6).")] = None,
    strength: Strength = None,
    model: Model = None, negative: Negative = "", width: Width = None, height: Height = None, steps: Steps = None,
    cfg_scale: Cfg = None, sampler: SamplerOpt = None, seed: Seed = None, upscale: Upscale = None,
    style: Annotated[Optional[list[str]], typer.Option("--style", help="A style preset every cell uses (repeat to combine).")] = None,
    outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto",
):
    """Compare settings on labelled grids: every combination of the axes' values is a cell, saved
    as its own picture (with its settings: `generate --from` re-makes it); one grid per z value."""
    base = {"mode": "img2img" if init_image else "txt2img", "init_image": str(init_image) if init_image else None,
            "strength": strength, "prompt": prompt, "negative_prompt": negative, "model": model, "width": width,
            "height": height, "steps": steps, "cfg_scale": cfg_scale, "sampler": sampler, "upscale": upscale,
            "n_samples": n_samples, "styles": style or []}
    fields = {"mode": "grid", "base": {key: value for key, value in base.items() if value is not None},
              "x": x, "y": y, "z": z, "seed": seed, "dtype": dtype, "device": device}
    run_grid(fields, outdir or Path("outputs/grid"))


def run_grid(fields: dict, outdir: Path) -> None:
    """Run a grid request with a bar of cells and one of steps; list the pictures and the grids."""
    from .studio import Studio, make_request

    request = make_request({key: value for key, value in fields.items() if value is not None})
    with progress_bar(err) as bar:
        cells = bar.add_task("cells", total=len(request.parts()))
        steps = bar.add_task("loading model", total=None)

        def on_progress(event):
            if event.stage == "cell":
                bar.update(cells, completed=event.step, description=event.message)
            elif event.stage == "denoise":
                bar.update(steps, description="steps", completed=event.step, total=event.total)
            elif event.stage in ("load", "decode", "upscale"):
                bar.update(steps, description=event.message or event.stage + "…")

        result = Studio().run(request, outdir=outdir, progress=on_progress)
    for image in result.images:
        shown = ", ".join(value["label"] for value in image.metadata["grid"].values())
        out.print(f"{image.path}  seed {image.seed}  {shown}", markup=False, highlight=False)
    for sheet in result.grids:
        out.print(f"grid: {sheet.path}" + ("" if sheet.metadata["grid"]["complete"] else "  (partial)"), markup=False)
    if result.interrupted:
        err.print(f"[yellow]stopped: kept the {len(result.images)} finished picture(s)[/yellow]")
        raise typer.Exit(130)
