"""`reverie style`: neural style transfer from the terminal.

    reverie style photo.png starry.png                       # optimise the picture (Gatys et al.)
    reverie style photo.png a.png:0.7 b.png:0.3 --preserve-colour
    reverie style --continue outputs/style/00000-style-photo --steps 100
    reverie style --model runs/style photo.png               # a trained style network, one pass

The first Ctrl-C ends an optimisation after the current step (its picture and state are saved,
so `--continue` picks it up); a second one stops at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn

from .cli_dream import _StopOnCtrlC
from .errors import BadRequest
from .terminal import progress_bar

out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

FEATURES_HELP = ("The network whose features define content and style: builtin (default), random, clip, or "
                 "vgg16:FILE / vgg19:FILE (torchvision's VGG weights from your disk, .pth or .safetensors).")
_WEIGHT = re.compile(r"^(?P<path>.+):(?P<weight>[^:/\\]*)$")


def parse_weighted_style(text: str) -> tuple[str, float | None]:
    """`a.png:0.7` -> ("a.png", 0.7); `a.png` -> ("a.png", None). A suffix after the last colon
    that is not a number above 0 is refused (a colon inside a folder name is left alone)."""
    found = _WEIGHT.match(text)
    if found is None or Path(text).exists():
        return text, None
    try:
        weight = float(found["weight"])
    except ValueError:
        raise BadRequest("STYLE", f"{text!r}: the weight after ':' must be a number, as in a.png:0.7") from None
    if not weight > 0:
        raise BadRequest("STYLE", f"{text!r}: the weight after ':' must be above 0, as in a.png:0.7")
    return found["path"], weight


def style_fields(styles: list[str]) -> dict:
    """style_images and style_weights from `PATH[:WEIGHT]` arguments (all weighted or none: 1 each)."""
    parsed = [parse_weighted_style(text) for text in styles]
    for path, _ in parsed:
        if not Path(path).is_file():
            raise BadRequest("STYLE", f"no style picture at {path}")
    weights = [weight for _, weight in parsed]
    fields = {"style_images": [path for path, _ in parsed]}
    if any(w is not None for w in weights):
        fields["style_weights"] = [1.0 if w is None else w for w in weights]
    return fields


def style(
    content: Annotated[Optional[Path], typer.Argument(help="The picture to restyle.", show_default=False)] = None,
    styles: Annotated[Optional[list[str]], typer.Argument(help="Style pictures, each PATH[:WEIGHT] (a.png:0.7 b.png:0.3).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A trained style network: a `reverie train style` run folder, or a name `reverie models` lists as style.")] = None,
    continue_from: Annotated[Optional[Path], typer.Option("--continue", help="A style run folder to go on with.")] = None,
    features: Annotated[Optional[str], typer.Option("--features", help=FEATURES_HELP)] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Longest side of the result in pixels (default 256).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimisation steps (default 150; 100 more when continuing).")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="lbfgs (default) or adam.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Step size (default 1 for lbfgs, 0.02 for adam).")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from the content picture (content, default) or from noise.")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", "--style-weight", help="How much style weighs against content.")] = None,
    smoothness: Annotated[Optional[float], typer.Option("--smoothness", "--tv", help="Total-variation weight: damps speckle.")] = None,
    preserve_colour: Annotated[Optional[bool], typer.Option("--preserve-colour/--no-preserve-colour", "--preserve-color", help="Keep the content picture's colours (the style gives the luminance only).")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Steps between snapshots in the run folder (default 50).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
    outdir: Annotated[Path, typer.Option("--outdir", "-o", help="Where the pictures and new run folders go.")] = Path("outputs/style"),
):
    """Style transfer: a picture in the style of others (optimised), or through a trained style network."""
    from .studio import Studio

    if continue_from is None and content is None:
        raise BadRequest("CONTENT", "give the picture to restyle and a style picture (or --model), or --continue RUN")
    if content is not None and not content.is_file():
        raise BadRequest("CONTENT", f"no picture at {content}")
    if model is not None and styles:
        raise BadRequest("--model", "a style network brings its own style; leave out the style pictures")
    if continue_from is None and model is None and not styles:
        raise BadRequest("STYLE", "give at least one style picture (PATH[:WEIGHT]), or a trained network with --model")
    given = {
        "mode": "style", "content_image": str(content) if content else None, "network": model,
        "continue_from": str(continue_from) if continue_from else None, "features": features, "size": size,
        "steps": steps, "optimizer": optimizer, "lr": lr, "init": init, "strength": strength, "smoothness": smoothness,
        "preserve_colour": preserve_colour, "save_every": save_every, "seed": seed, "device": device,
    }
    fields = {k: v for k, v in given.items() if v is not None} | (style_fields(styles) if styles else {})

    with _StopOnCtrlC() as stop, progress_bar(err, TextColumn("{task.fields[loss]}")) as bar:
        task = bar.add_task("loading", total=None, loss="")

        def on_progress(event):
            if event.stage == "style":
                bar.update(task, description="styling", completed=event.step, total=event.total, loss=event.message)
            elif event.message:
                bar.update(task, description=event.message)

        result = Studio().run(fields, outdir=outdir, progress=on_progress, should_stop=stop)
    image = result.images[0]
    run_dir = getattr(result, "run_dir", None)
    if run_dir is None:
        out.print(f"{image.path}")
        return
    out.print(f"{image.path}  step {result.step}  ({result.stopped})")
    out.print(f"continue with: reverie style --continue {escape(str(run_dir))}")
    if result.stopped == "interrupted":
        raise typer.Exit(130)
