"""`reverie txt2img`: the CompVis `scripts/txt2img.py` command line, for people who come with it.

The original's flags work as they did (`--prompt --plms --ddim_steps --scale --n_samples --n_iter
--H --W --seed --ckpt --outdir --skip_grid --skip_save --n_rows --from-file --fixed_code
--ddim_eta --precision`), and it writes the original's layout: `OUTDIR/samples/00000.png, ...` and
`OUTDIR/grid-0000.png`, each with reverie's settings inside. reverie reads the architecture from
the checkpoint itself, so `--config` is only accepted as the original's own v1 inference file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import BadRequest
from .terminal import progress_bar

err = Console(stderr=True, soft_wrap=True, emoji=False)
out = Console(soft_wrap=True, emoji=False)
ORIGINAL_CONFIG = "v1-inference.yaml"


def txt2img(
    prompt: Annotated[str, typer.Option("--prompt", help="The prompt to render.")] = "a painting of a virus monster playing guitar",
    outdir: Annotated[Path, typer.Option("--outdir", help="Where samples/ and the grids go.")] = Path("outputs/txt2img-samples"),
    skip_grid: Annotated[bool, typer.Option("--skip_grid", help="Do not save a grid, only the samples.")] = False,
    skip_save: Annotated[bool, typer.Option("--skip_save", help="Do not save the individual samples (grid only).")] = False,
    ddim_steps: Annotated[int, typer.Option("--ddim_steps", help="Number of sampling steps.")] = 50,
    plms: Annotated[bool, typer.Option("--plms", help="Use PLMS sampling (else DDIM).")] = False,
    laion400m: Annotated[bool, typer.Option("--laion400m", help="The original's LAION-400M model: not available.")] = False,
    fixed_code: Annotated[bool, typer.Option("--fixed_code", help="The same starting code for every batch.")] = False,
    ddim_eta: Annotated[float, typer.Option("--ddim_eta", help="DDIM eta (0.0 is deterministic DDIM).")] = 0.0,
    n_iter: Annotated[int, typer.Option("--n_iter", help="Sample this often.")] = 2,
    height: Annotated[Optional[int], typer.Option("--H", help="Height in pixels (default: the model's own).")] = None,
    width: Annotated[Optional[int], typer.Option("--W", help="Width in pixels (default: the model's own).")] = None,
    channels: Annotated[Optional[int], typer.Option("--C", help="Latent channels (read from the checkpoint; checked when given).")] = None,
    factor: Annotated[Optional[int], typer.Option("--f", help="Downsampling factor (read from the checkpoint; checked when given).")] = None,
    n_samples: Annotated[int, typer.Option("--n_samples", help="How many samples per prompt (the batch size).")] = 3,
    n_rows: Annotated[int, typer.Option("--n_rows", help="Pictures per grid row (default: n_samples).")] = 0,
    scale: Annotated[float, typer.Option("--scale", help="Unconditional guidance scale.")] = 7.5,
    from_file: Annotated[Optional[Path], typer.Option("--from-file", help="Read prompts from this file, one per line.")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="The original's model config (read from the checkpoint here).")] = None,
    ckpt: Annotated[Optional[str], typer.Option("--ckpt", help="Path to the checkpoint (default: reverie's built-in model).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="The seed (for reproducible sampling).")] = 42,
    precision: Annotated[str, typer.Option("--precision", help="full (fp32) or autocast (the device's fast type).")] = "autocast",
):
    """Text to image with the original CompVis script's flags and file layout."""
    from .outputs.grid import make_grid
    from .outputs.metadata import save_png
    from .studio import Studio, make_request

    if laion400m:
        raise BadRequest("laion400m", "the LAION-400M latent diffusion model is not available in reverie; pass --ckpt FILE")
    if config is not None and Path(config).name != ORIGINAL_CONFIG:
        raise BadRequest("config", f"reverie reads the architecture from the checkpoint; --config takes only the original "
                                   f"{ORIGINAL_CONFIG} (leave it out for other models)")
    if precision not in ("full", "autocast"):
        raise BadRequest("precision", "use full or autocast")
    prompts = _prompts(prompt, from_file)
    common = dict(mode="txt2img", model=ckpt, steps=ddim_steps, sampler="plms" if plms else "ddim", eta=ddim_eta,
                  cfg_scale=scale, width=width, height=height, n_samples=n_samples, upscale=1,
                  dtype="fp32" if precision == "full" else "auto")
    requests = [make_request(common | {"prompt": text, "seed": seed + (0 if fixed_code else batch * n_samples)})
                for text in prompts for batch in range(n_iter)]
    samples = outdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    studio, pictures = Studio(), []
    with progress_bar(err) as bar:
        task = bar.add_task("sampling", total=len(requests) * n_samples)
        for request in requests:
            result = studio.run(request, progress=lambda event: bar.advance(task) if event.stage == "image" else None)
            _check_shape(result, channels, factor)
            for image in result.images:
                if not skip_save:
                    path = save_png(image.image, samples / f"{len(list(samples.glob('*.png'))):05d}.png",
                                    image.parameters, image.metadata)
                    out.print(str(path))
                pictures.append(image)
            if result.interrupted:
                raise typer.Exit(130)
    if not skip_grid and pictures:
        number = len(list(outdir.glob("grid-*.png")))
        grid = make_grid([image.image for image in pictures], columns=n_rows or n_samples)
        out.print(str(save_png(grid, outdir / f"grid-{number:04d}.png", pictures[0].parameters, pictures[0].metadata)))
    out.print(f"Your samples are ready and waiting for you here:\n{outdir}\n\nEnjoy.")


def _prompts(prompt: str, from_file: Path | None) -> list[str]:
    if from_file is None:
        return [prompt]
    if not from_file.is_file():
        raise BadRequest("from-file", f"no file at {from_file}")
    lines = [line.strip() for line in from_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise BadRequest("from-file", f"{from_file} holds no prompts (one per line)")
    return lines


def _check_shape(result, channels: int | None, factor: int | None) -> None:
    """--C and --f describe the model; a given value that contradicts the checkpoint is refused."""
    settings = result.images[0].metadata["settings"] if result.images else {}
    if channels is not None and settings.get("latent_channels") not in (None, channels):
        raise BadRequest("C", f"this model has {settings['latent_channels']} latent channels, not {channels}")
    if factor is not None and settings.get("vae_scale") not in (None, factor):
        raise BadRequest("f", f"this model downsamples by {settings['vae_scale']}, not {factor}")
