"""Style transfer by optimisation (Gatys et al.): the picture's pixels are changed until its deep
features match the content picture and its Gram matrices match the style pictures'.

A run folder holds everything needed to continue:
- `style.json`: the settings, the step reached, the loss history and why it stopped;
- `state.pt`: the pixels, the optimizer state (L-BFGS history or Adam moments), the random
  generator and the step (plain tensors and numbers; read back with `weights_only=True`);
- `content.png`, `style-N.png`: the pictures at the working size, so a continued run needs
  none of the original files;
- `style.png`: the latest picture, with its settings; `steps/NNNNNN.png`: the snapshots.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ... import __version__
from ...device import check_fits
from ...errors import BadCheckpoint, BadRequest, ModelNotFound, ReverieError
from ...models.cache import ModelCache
from ...models.style_features import FeatureNetwork, load_features
from ...models.style_objective import StyleTargets, style_transfer_loss
from ...outputs.files import atomic_write, write_text
from ...outputs.metadata import a1111_parameters, save_png
from ...pixels import to_picture, to_tensor
from ...progress import Progress, ProgressEvent
from ...result import GeneratedImage, Result
from .colour import keep_colours
from .pictures import working_picture
from .request import DEFAULT_LR, StyleRequest

SETTINGS_FILE, STATE_FILE, PICTURE_FILE, SNAPSHOTS = "style.json", "state.pt", "style.png", "steps"
CONTENT_FILE = "content.png"
# Settings that define the run's space; a continued run keeps them.
FIXED_ON_CONTINUE = ("features", "size", "seed", "optimizer", "init", "style_weights")
CHANGEABLE = ("steps", "strength", "smoothness", "save_every", "lr", "preserve_colour")
PREVIEW_EVERY = 10  # steps between live previews, for a listener that asked for them
LBFGS_HISTORY = 50
PROBE_SIDE = 64
STYLE_ADVICE = "make the result smaller (size) or use the adam optimizer, which keeps no history"


def style_peak_bytes(network: FeatureNetwork, height: int, width: int, optimizer: str) -> int:
    """Peak memory of one step: the feature network's activations per pixel, counted on a small
    probe (every layer's output: about what autograd keeps for the backward pass), the picture
    with its gradient, and (L-BFGS) two history vectors per remembered step. With the built-in
    features at 1024 px this says 3.5 GiB; three L-BFGS steps measured 2.3 GiB of new peak
    memory, before the history filled (1.2 GiB more)."""
    counted = []
    hooks = [module.register_forward_hook(lambda _m, _i, out: counted.append(out.numel()))
             for module in network.modules() if not list(module.children())]
    try:
        with torch.no_grad():
            network.features(torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE, device=next(network.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    pixels = height * width
    activations = 4 * sum(counted) / PROBE_SIDE**2 * pixels
    picture = 4 * 3 * pixels
    history = 2 * LBFGS_HISTORY * picture if optimizer == "lbfgs" else 2 * picture
    return int(activations + 3 * picture + history)
RANGE_WEIGHT = 10.0  # of the squared distance of pixels outside [0, 1]


def outside_range(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - pixels.clamp(0, 1)).pow(2).flatten(1).sum(1).mean() / pixels[0].numel() * 3


class StyleDiverged(ReverieError):
    """The style loss became NaN or infinite."""


@dataclass
class StyleReport(Result):
    """What a run of a style transfer did: its picture (also `images[0]`), where it stopped and why."""

    run_dir: Path | None = None
    picture: Path | None = None
    step: int = 0
    loss: float = math.nan
    stopped: str = "steps"  # "steps" or "interrupted"
    snapshots: list[Path] = field(default_factory=list)


def feature_network(models: ModelCache, reference: str, device: torch.device) -> FeatureNetwork:
    """The feature network `reference` names, loaded once per device through the shared cache."""
    return models.get(("style-features", reference, str(device)), lambda: load_features(reference).to(device))


def style_label(request: StyleRequest, names: list[str] | None = None) -> str:
    """`a.png:0.70, b.png:0.30`: the styles as the metadata shows them."""
    names = names or [Path(s).name if isinstance(s, str) else "<image>" for s in request.style_images]
    return ", ".join(f"{name}:{weight:.2f}" for name, weight in zip(names, request.weights()))


class StyleTransfer:
    """The optimisation of one picture toward a content and weighted styles."""

    def __init__(self, request: StyleRequest, device: torch.device | str = "cpu", models: ModelCache | None = None,
                 pictures: tuple[Image.Image, list[Image.Image]] | None = None, network: FeatureNetwork | None = None):
        """`pictures`: the content and style pictures at the working size (a continued run's);
        read from the request when None. `network`: a feature network in place of the one
        `request.features` names (benchmarks, notebooks)."""
        self.request = request = request.with_seed()
        self.device = torch.device(device)
        self.models = models if models is not None else ModelCache()
        self.network = network if network is not None else feature_network(self.models, request.features, self.device)
        if pictures is None:
            pictures = (working_picture(request.content_image, request.size),
                        [working_picture(s, request.size, "style_images") for s in request.style_images])
        self.content_picture, self.style_pictures = pictures
        self.content = to_tensor(self.content_picture).to(self.device)
        with torch.no_grad():
            self.content_target = self.network.features(self.content)[1]
        self.styles = StyleTargets.of(self.network, [to_tensor(p).to(self.device) for p in self.style_pictures],
                                      request.weights())
        self.rng = torch.Generator().manual_seed(request.seed)
        start = self.content.clone() if request.init == "content" else torch.rand(self.content.shape, generator=self.rng)
        self.pixels = start.to(self.device).requires_grad_(True)
        self.optimizer = self._optimizer()
        self.step, self.history = 0, []
        self.loss = math.nan

    def check_memory(self) -> None:
        """Refuse, before the first step, a transfer whose peak memory would not fit."""
        height, width = self.content.shape[-2:]
        check_fits(style_peak_bytes(self.network, height, width, self.request.optimizer), self.device, STYLE_ADVICE)

    def _optimizer(self) -> torch.optim.Optimizer:
        lr = self.request.lr or DEFAULT_LR[self.request.optimizer]
        if self.request.optimizer == "lbfgs":
            # One L-BFGS iteration per step, so a step is a step whichever optimizer runs; the
            # history carries over between steps. No line search: torch's strong-Wolfe search
            # returns a zero step on this loss after a few iterations and L-BFGS then stalls
            # for good, where fixed steps of lr 1 (as jcjohnson/neural-style runs) keep falling.
            return torch.optim.LBFGS([self.pixels], lr=lr, max_iter=1, history_size=LBFGS_HISTORY)
        return torch.optim.Adam([self.pixels], lr=lr)

    # -- running ---------------------------------------------------------------------------
    def objective(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        request = self.request
        return style_transfer_loss(self.network, pixels, self.content_target, self.styles, request.strength,
                                   request.smoothness)

    def iterate(self) -> float:
        """One optimizer step; returns the loss before it.

        The pixels are not clamped between steps (a clamp breaks L-BFGS's curvature pairs and
        stalls it); a penalty keeps them near [0, 1], and the picture is clamped when shown."""
        parts = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss, measured = self.objective(self.pixels)
            (loss + RANGE_WEIGHT * outside_range(self.pixels)).backward()
            parts.setdefault("first", (float(loss.detach()), measured))
            return loss

        self.optimizer.step(closure)
        value, measured = parts["first"]
        if not math.isfinite(value) or not torch.isfinite(self.pixels).all():
            raise StyleDiverged(f"the style loss became {value} at step {self.step + 1}; start again with a lower lr "
                                f"(below {self.optimizer.param_groups[0]['lr']:g}) or the adam optimizer")
        self.step += 1
        self.loss = value
        self.history.append({"step": self.step, "loss": round(value, 6)} | {k: round(v, 6) for k, v in measured.items()})
        return value

    def result_pixels(self) -> torch.Tensor:
        """The picture as it is shown: with the content's colours when `preserve_colour`."""
        pixels = self.pixels.detach().clamp(0, 1)
        return keep_colours(pixels, self.content) if self.request.preserve_colour else pixels

    def picture(self) -> Image.Image:
        return to_picture(self.result_pixels())

    def run(self, steps: int, run_dir: str | Path, progress: Progress | None = None) -> StyleReport:
        """Advance up to `steps` steps, saving snapshots and the state in `run_dir` every
        `save_every` steps. Stops early when `progress` asks or on Ctrl-C; the last picture and
        the state are saved however it ends."""
        progress = progress or Progress()
        run_dir = Path(run_dir)
        self._save_pictures(run_dir)
        target = self.step + steps
        stopped, snapshots = "steps", []
        try:
            while self.step < target:
                if progress.stop_requested():
                    stopped = "interrupted"
                    break
                loss = self.iterate()
                preview = None
                if self.step % self.request.save_every == 0:
                    preview = self.picture()
                    snapshots.append(self._save_picture(preview, run_dir / SNAPSHOTS / f"{self.step:06d}.png"))
                    self.save(run_dir, stopped="running")
                elif progress.previews and self.step % PREVIEW_EVERY == 0:
                    preview = self.picture()
                progress(ProgressEvent("style", self.step, target, message=f"loss {loss:.4f}", preview=preview))
        except KeyboardInterrupt:
            stopped = "interrupted"
        picture = self.picture()
        path = self._save_picture(picture, run_dir / PICTURE_FILE)
        self.save(run_dir, stopped=stopped)
        parameters, metadata = self.metadata()
        image = GeneratedImage(picture, self.request.seed, 0, metadata, parameters, path=path)
        return StyleReport(request=self.request, images=[image], interrupted=stopped == "interrupted", run_dir=run_dir,
                           picture=path, step=self.step, loss=self.loss, stopped=stopped, snapshots=snapshots)

    # -- saving and continuing -------------------------------------------------------------
    def metadata(self) -> tuple[str, dict]:
        request = self.request
        settings = request.settings() | {"step": self.step, "reverie_version": __version__}
        content = Path(request.content_image).name if isinstance(request.content_image, str) else "<image>"
        parameters = a1111_parameters(f"style transfer: {content} in the style of {style_label(request)}", "", {
            "Steps": self.step, "Seed": request.seed, "Size": f"{self.content.shape[-1]}x{self.content.shape[-2]}",
            "Features": request.features, "Optimizer": request.optimizer, "Init": request.init,
            "Strength": request.strength, "Smoothness": request.smoothness,
            "Preserve colour": "yes" if request.preserve_colour else None,
        })
        return parameters, {"format": 1, "seed": request.seed, "index": 0, "settings": settings}

    def _save_picture(self, picture: Image.Image, path: Path) -> Path:
        parameters, metadata = self.metadata()
        return save_png(picture, path, parameters, metadata)

    def _save_pictures(self, run_dir: Path) -> None:
        (run_dir / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        if not (run_dir / CONTENT_FILE).is_file():
            atomic_write(run_dir / CONTENT_FILE, lambda partial: self.content_picture.save(partial, format="PNG"))
            for i, picture in enumerate(self.style_pictures):
                atomic_write(run_dir / f"style-{i}.png", lambda partial, p=picture: p.save(partial, format="PNG"))

    def save(self, run_dir: Path, stopped: str = "running") -> None:
        state = {"pixels": self.pixels.detach().cpu().clone(), "optimizer": self.optimizer.state_dict(),
                 "rng": self.rng.get_state(), "step": self.step}
        atomic_write(run_dir / STATE_FILE, lambda partial: torch.save(state, partial))
        record = {"settings": self.request.settings(), "step": self.step, "stopped": stopped,
                  "styles": len(self.style_pictures), "history": self.history}
        write_text(run_dir / SETTINGS_FILE, json.dumps(record, indent=1))

    @classmethod
    def resume(cls, run_dir: str | Path, device: torch.device | str = "cpu", models: ModelCache | None = None,
               **changes) -> StyleTransfer:
        """The run saved in `run_dir`, exactly where it stopped; `changes` may give new steps,
        strength, smoothness, save_every, lr or preserve_colour, not a new size, seed or optimizer."""
        run_dir = Path(run_dir)
        if not (run_dir / SETTINGS_FILE).is_file() or not (run_dir / STATE_FILE).is_file():
            raise ModelNotFound(f"continue_from: {run_dir} is not a style run folder (no {SETTINGS_FILE} and {STATE_FILE})")
        try:
            record = json.loads((run_dir / SETTINGS_FILE).read_text())
            state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
            content = Image.open(run_dir / CONTENT_FILE).convert("RGB")
            styles = [Image.open(run_dir / f"style-{i}.png").convert("RGB") for i in range(record["styles"])]
        except (ValueError, RuntimeError, OSError, EOFError, KeyError) as exc:
            raise BadCheckpoint(f"continue_from: {run_dir} holds a damaged style run ({str(exc).splitlines()[0]})") from None
        settings = record["settings"]
        for name in FIXED_ON_CONTINUE:
            if changes.get(name) is not None and changes[name] != settings.get(name):
                raise BadRequest(name, f"a continued run keeps its {name} ({settings.get(name)}); start a new one to change it")
        settings = {key: value for key, value in settings.items() if key in StyleRequest.model_fields}
        kept = {key: value for key, value in changes.items() if key in CHANGEABLE and value is not None}
        request = StyleRequest.build(**(settings | kept | {"continue_from": None}))
        transfer = cls(request, device, models, pictures=(content, styles))
        transfer._load_state(state, record)
        if "lr" in kept:
            for group in transfer.optimizer.param_groups:
                group["lr"] = kept["lr"]
        return transfer

    def _load_state(self, state: dict, record: dict) -> None:
        if state["pixels"].shape != self.pixels.shape:
            raise BadCheckpoint(f"continue_from: the saved picture is {tuple(state['pixels'].shape)}, its content "
                                f"{tuple(self.pixels.shape)}; the run folder was changed by hand, start a new run")
        with torch.no_grad():
            self.pixels.copy_(state["pixels"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.step = int(state["step"])
        self.history = record.get("history", [])
        self.loss = self.history[-1]["loss"] if self.history else math.nan
