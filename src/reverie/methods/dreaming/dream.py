"""A dream in progress: build it, advance it, save it, continue it exactly.

A run folder holds everything needed to continue:
- `dream.json`: the settings, the step reached, the score history and why it stopped;
- `state.pt`: the generator's tensors, the optimizer state, the random generator state and the
  patience counters (plain tensors and numbers; read back with `torch.load(weights_only=True)`);
- `dream.png`: the latest picture, with its settings; `steps/NNNNNN.png`: the snapshots.
"""

from __future__ import annotations

import copy
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ... import __version__
from ...device import check_fits
from ...errors import BadCheckpoint, BadRequest, ModelNotFound, ReverieError
from ...models.cache import ModelCache
from ...models.components import ModelComponents
from ...outputs.files import atomic_write, write_text
from ...outputs.metadata import a1111_parameters, save_png
from ...pixels import to_picture, to_tensor
from ...progress import Progress, ProgressEvent
from ...result import GeneratedImage, Result
from ..diffusion.run import diffusion_model
from ..upscale.pictures import check_upscale_fits, upscaled
from .cutouts import CutoutSettings
from .guides import load_guide
from .objective import Target, clean_scores, dream_loss, image_target, text_targets, total_variation
from .prior import NO_PRIOR, DiffusionPrior, prior_for
from .prompts import parse_dream_prompt, parse_image_prompt
from .request import BUILTIN_GENERATOR, OPTIMIZERS, DreamRequest
from .sources import build_generator, load_network

SETTINGS_FILE, STATE_FILE, PICTURE_FILE, SNAPSHOTS = "dream.json", "state.pt", "dream.png", "steps"
# Settings that define the dream's space; a continued dream keeps them.
FIXED_ON_CONTINUE = ("generator", "width", "height", "seed", "truncation")
SMOOTHING = 0.9  # of the loss that --patience watches; single iterations are noisy (random cutouts)
MIN_IMPROVEMENT = 1e-4
MAX_RECOVERIES = 3  # times a dream that went non-finite steps back and lowers its learning rate
LR_CUT = 0.1  # ... by this factor each time
CHECKPOINT_EVERY, KEPT_STATES = 10, 3  # steps between the finite states kept to step back to; how many


class DreamDiverged(ReverieError):
    """A dream's loss, scores or tensors became NaN or infinite and stepping back did not help."""


@dataclass
class DreamReport(Result):
    """What a run of a dream did: its picture (also `images[0]`), where it stopped and why."""

    run_dir: Path | None = None
    picture: Path | None = None
    step: int = 0
    score: float = math.nan
    stopped: str = "iterations"  # "iterations", "patience" or "interrupted"
    snapshots: list[Path] = field(default_factory=list)
    video: Path | None = None


class Dream:
    """CLIP-steered optimization of one generator's inputs toward weighted prompts."""

    def __init__(self, request: DreamRequest, device: torch.device | str = "cpu", models: ModelCache | None = None):
        self.request = request = request.with_seed()
        self.device = torch.device(device)
        self.models = models if models is not None else ModelCache()
        self.rng = torch.Generator().manual_seed(request.seed)
        prompts = parse_dream_prompt(request.prompt)
        pulling = [p for p in prompts if p.weight]  # what the prior steers toward or away from
        prior_model = self._prior_model(request, pulling)
        if prior_model is not None and prior_for(request.prior, request.generator) == request.generator:
            self.kind, network = "latent", prior_model.vae  # dreaming in the prior's own latents: load it once
        elif request.generator == BUILTIN_GENERATOR:  # the built-in model, as the cache holds it for every method
            self.kind, network = "latent", diffusion_model(self.models, BUILTIN_GENERATOR, self.device, torch.float32).vae
        else:
            self.kind, network = self.models.get(("generator", request.generator), lambda: load_network(request.generator))
        if network is not None:
            network.to(self.device)
        self.generator = build_generator(self.kind, network, request.height, request.width, self.rng,
                                         request.truncation).to(self.device)
        self._check_memory(network, prior_model is not None)
        self.guides = [self.models.get(("guide", ref, str(self.device)), lambda ref=ref: load_guide(ref).to(self.device))
                       for ref in request.guides]
        if request.init_image is not None:
            if not self.generator.can_start_from_image:
                raise BadRequest("init_image", f"the {self.kind} generator cannot start from a picture")
            self.generator.set_image(self._picture(request.init_image, "init_image").to(self.device))
            self.generator.after_step()
        if request.zoom and not self.generator.can_start_from_image:
            raise BadRequest("zoom", f"the {self.kind} generator cannot start from a zoomed picture; leave zoom out "
                                     "or dream with mini, pixels, a VQGAN or an autoencoder")
        self._text_vectors: dict[tuple[str, ...], list[list[torch.Tensor]]] = {}  # see `_text_targets`
        self._image_targets = self._image_prompt_targets(request)
        self.targets = self._text_targets(prompts) + self._image_targets
        self.prior = None if prior_model is None else DiffusionPrior(prior_model, pulling, request.prior_guidance, self.device)
        # Dreaming in the prior's own latent space, the prior reads the dream's latents themselves.
        self._prior_reads_latents = self.prior is not None and getattr(self.generator, "vae", None) is self.prior.vae
        self.optimizer = self._optimizer()
        self.step, self.smoothed, self.best, self.since_best = 0, math.nan, math.inf, 0
        self.history: list[dict] = []
        self.recoveries: list[dict] = []  # where the dream went non-finite and stepped back (see `iterate`)
        self._finite_states: deque[dict] = deque(maxlen=KEPT_STATES)  # what stepping back can return to
        self._stepped_back_to: dict | None = None
        self._recoveries_left = MAX_RECOVERIES  # in this run
        self.cutouts = CutoutSettings(request.cutouts, request.cut_power, request.augment, request.noise)

    # -- set-up ----------------------------------------------------------------------------
    def _picture(self, reference, field_name: str) -> torch.Tensor:
        from ..diffusion.images import load_image

        picture = load_image(reference, field_name).convert("RGB")
        return to_tensor(picture.resize((self.request.width, self.request.height), Image.LANCZOS))

    def _text_targets(self, prompts) -> list[Target]:
        """Targets of parsed text prompts. The guides' embeddings are kept by the list of texts,
        which is always encoded as one batch: a dream video that goes back to a prompt, or that
        continues from its saved state, gets exactly the vectors it had."""
        texts = tuple(p.text for p in prompts)
        if texts not in self._text_vectors:
            self._text_vectors[texts] = [t.vectors for t in text_targets(self.guides, prompts)]
        return [Target(p.text, p.weight, p.stop, vectors) for p, vectors in zip(prompts, self._text_vectors[texts])]

    def _image_prompt_targets(self, request: DreamRequest) -> list[Target]:
        targets = []
        for reference in request.image_prompts:
            path, weight, stop = parse_image_prompt(reference)
            pixels = self._picture(str(path), "image_prompts").to(self.device)
            targets.append(image_target(self.guides, str(path), pixels, weight, stop))
        return targets

    def _prior_model(self, request: DreamRequest, pulling) -> ModelComponents | None:
        """The loaded model whose denoiser is the dream's prior, or None for no prior."""
        reference = prior_for(request.prior, request.generator)
        if reference == NO_PRIOR or request.prior_weight == 0 or not pulling:
            return None
        components = diffusion_model(self.models, reference, self.device, torch.float32)
        if int(components.unet.config.in_channels) != int(components.vae.config.latent_channels):
            raise BadRequest("prior", f"{reference} is an inpainting model; give a text-to-image model as the prior")
        return components

    def _check_memory(self, network, prior: bool) -> None:
        """Refuse, before any iteration, a dream whose iterations would not fit in free memory
        (a deliberately generous estimate for the built-in networks), and its saved pictures'
        upscale too."""
        request = self.request
        check_fits(dream_peak_bytes(network, request.width, request.height, request.cutouts, len(request.guides), prior),
                   self.device, "make the dream smaller (width/height) or use fewer cutouts")
        check_upscale_fits((request.width, request.height), request.upscale, "upscale")

    def _optimizer(self) -> torch.optim.Optimizer:
        lr = self.request.lr or self.generator.default_lr
        optimizer = getattr(torch.optim, OPTIMIZERS[self.request.optimizer])
        return optimizer(list(self.generator.trainable().values()), lr=lr)

    # -- changing course: a new prompt, a moved picture ------------------------------------
    def retarget(self, prompt: str) -> None:
        """Steer toward a new VQGAN+CLIP prompt (`text:weight:stop | ...`) from the next iteration:
        new text targets (the image prompts stay), the prior pulled toward the new prompts too,
        and `request.prompt` the one in force, as `save` records it. The same prompt again
        changes nothing; a malformed one raises PromptSyntaxError and changes nothing either."""
        if prompt == self.request.prompt:
            return
        prompts = parse_dream_prompt(prompt)
        self.targets = self._text_targets(prompts) + self._image_targets
        if self.prior is not None:
            self.prior.set_prompts([p for p in prompts if p.weight])
        self.request = self.request.model_copy(update={"prompt": prompt})

    @torch.no_grad()
    def warp(self, transform: Callable[[Image.Image], Image.Image]) -> None:
        """Move the picture and dream on from the moved one: `transform(picture) -> picture` of
        the same size (a zoom, a turn, a pan), and the generator restarts from what it returns.

        The optimizer starts afresh (its moments and step count are dropped; its learning rate,
        lowered by a recovery or not, is kept), as the VQGAN+CLIP zoom notebooks recreate theirs
        after each zoom: the generator's tensors are re-encoded from the moved picture, so the
        moments gathered for the old ones describe another point. The states kept to step back
        to are dropped too: stepping back past a move would undo it. `save`/`resume` continue
        bit for bit across warps, since the fresh optimizer's state is what is saved.
        A generator that cannot start from a picture (BigGAN, a GAN) is refused.
        """
        if not self.generator.can_start_from_image:
            raise BadRequest("motion", f"the {self.kind} generator cannot start from a moved picture; dream a moving "
                                       "video with mini, pixels, a VQGAN or an autoencoder as the generator, "
                                       "or leave zoom, angle and translation at rest")
        picture = self.picture()
        moved = transform(picture)
        if moved.size != picture.size:
            raise ValueError(f"a warp must keep the picture's size {picture.size}, not make it {moved.size}")
        self.generator.set_image(to_tensor(moved).to(self.device))
        self.generator.after_step()
        lr = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer = self._optimizer()
        for group, rate in zip(self.optimizer.param_groups, lr):
            group["lr"] = rate
        self._finite_states.clear()
        self._stepped_back_to = None

    # -- running ---------------------------------------------------------------------------
    def picture(self) -> Image.Image:
        with torch.no_grad():
            pixels = self.generator()
        if not torch.isfinite(pixels).all():  # a last net: NaN would be saved as black
            raise DreamDiverged("the dream's picture is not finite (NaN); nothing was saved")
        return to_picture(pixels)

    def shown(self, picture: Image.Image) -> Image.Image:
        """A picture as the dream saves it: `upscale` times larger, by the built-in upscaler."""
        with torch.no_grad():
            return upscaled([picture], self.request.upscale, self.models)[0]

    def scores(self, texts: list[str]) -> list[float]:
        """Cosine of the current picture to each text, by the dream's own guides."""
        with torch.no_grad():
            return clean_scores(self.generator(), self.guides, texts)

    def iterate(self) -> tuple[float, float]:
        """One optimizer step; returns (loss, score).

        A step whose loss or score is not finite, whose gradients are not, or that leaves the
        generator's tensors non-finite is undone: the dream steps back to its last finite state
        kept (one every CHECKPOINT_EVERY steps; further back when it fails again before the next)
        and goes on with a learning rate ten times lower. After MAX_RECOVERIES of those it stops
        with DreamDiverged; it never goes on from (or saves) a non-finite state.
        """
        while True:
            outcome = self._try_step()
            if isinstance(outcome, tuple):
                return outcome
            self._recover(outcome)

    def _try_step(self) -> tuple[float, float] | str:
        """(loss, score) of a finite step taken, or what went non-finite (the step not taken,
        or undone)."""
        if self.request.zoom and self.step and self.step % self.request.zoom_every == 0:
            self._zoom()
        self.optimizer.zero_grad(set_to_none=True)
        pixels = self.generator()
        loss, score = dream_loss(pixels, self.guides, self.targets, self.cutouts, self.rng)
        if self.prior is not None:
            latents = self.generator.latents if self._prior_reads_latents else None
            loss = loss + self.request.prior_weight * self.prior.loss(pixels, self.rng, latents)
        if self.request.smoothness:
            loss = loss + self.request.smoothness * total_variation(pixels)
        value = float(loss.detach())
        if not (math.isfinite(value) and math.isfinite(score)):
            return "the loss"
        if not self._finite_states or self.step - self._finite_states[-1]["step"] >= CHECKPOINT_EVERY:
            self._finite_states.append(self.checkpoint())  # this state gave a finite loss
        loss.backward()
        if not all(torch.isfinite(p.grad).all() for p in self.generator.trainable().values() if p.grad is not None):
            return "the gradients"
        self.optimizer.step()
        self.generator.after_step()
        if not all(torch.isfinite(p).all() for p in self.generator.trainable().values()):
            return "the generator's tensors"
        self.step += 1
        self.smoothed = value if math.isnan(self.smoothed) else SMOOTHING * self.smoothed + (1 - SMOOTHING) * value
        if self.smoothed < self.best - MIN_IMPROVEMENT:
            self.best, self.since_best = self.smoothed, 0
        else:
            self.since_best += 1
        self.history.append({"step": self.step, "loss": round(value, 6), "score": round(score, 6)})
        return value, score

    def checkpoint(self) -> dict:
        """What stepping back restores: the tensors, the optimizer, the randomness, the counters,
        the prompt in force."""
        return {"params": {name: p.detach().clone() for name, p in self.generator.trainable().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "rng": self.rng.get_state(),
                "step": self.step, "patience": (self.smoothed, self.best, self.since_best), "history": len(self.history),
                "prompt": self.request.prompt}

    def _restore(self, state: dict) -> None:
        with torch.no_grad():
            for name, param in self.generator.trainable().items():
                param.copy_(state["params"][name])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.rng.set_state(state["rng"])
        self.step = state["step"]
        self.smoothed, self.best, self.since_best = state["patience"]
        del self.history[state["history"]:]
        self.retarget(state["prompt"])

    def rewind(self, state: dict) -> None:
        """Go back to a `checkpoint()` of this dream, taken before a step, warp or retarget that
        is to be undone (a dream video's frame that was stopped half made). The states kept to
        step back to after it are dropped."""
        self._restore(state)
        self._finite_states.clear()
        self._stepped_back_to = None

    def _recover(self, what: str) -> None:
        """Step back to a finite state with a ten times lower learning rate, or give up."""
        lr = self.optimizer.param_groups[0]["lr"]
        if not self._finite_states:
            raise DreamDiverged(
                f"the dream is not finite from its start ({what} is NaN or infinite before any step): the "
                f"generator or a guide gives NaN for this request; nothing was saved")
        if self._recoveries_left == 0:
            raise DreamDiverged(
                f"the dream went non-finite ({what} became NaN or infinite) at step {self.step + 1}, "
                f"{MAX_RECOVERIES + 1} times, even after lowering the learning rate to {lr:g}; nothing was saved "
                f"from it. Start again with a lower learning rate (lr below {lr:g}), or a smaller prior_weight")
        if self._stepped_back_to is self._finite_states[-1] and len(self._finite_states) > 1:
            self._finite_states.pop()  # it failed again from there: go further back
        state = self._stepped_back_to = self._finite_states[-1]
        self._restore(state)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * LR_CUT
        self.recoveries.append({"step": self.step, "non_finite": what, "lr": lr * LR_CUT})
        self._recoveries_left -= 1

    def _zoom(self) -> None:
        """Zoom-in mode: enlarge the centre of the picture and dream on from there."""
        zoom = self.request.zoom
        self.warp(lambda picture: centre_zoom(picture, zoom))

    def run(self, iterations: int, run_dir: str | Path, progress: Progress | None = None) -> DreamReport:
        """Advance up to `iterations` steps, saving snapshots and the state in `run_dir`.

        Stops early when `progress` asks, on Ctrl-C, or when the smoothed loss has not improved
        for `patience` steps; the last picture and the state are saved however it ends.
        """
        progress = progress or Progress()
        run_dir = Path(run_dir)
        (run_dir / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        target = self.step + iterations
        stopped, score, snapshots = "iterations", math.nan, []
        try:
            while self.step < target:
                if progress.stop_requested():
                    stopped = "interrupted"
                    break
                _, score = self.iterate()
                snapshot = None
                if self.step % self.request.save_every == 0:
                    snapshot = self.shown(self.picture())
                    snapshots.append(self._save_picture(snapshot, run_dir / SNAPSHOTS / f"{self.step:06d}.png"))
                    self.save(run_dir, stopped="running")
                progress(ProgressEvent("dream", self.step, target, message=f"score {score:.3f}", preview=snapshot))
                if self.request.patience and self.since_best >= self.request.patience:
                    stopped = "patience"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
        shown = self.shown(self.picture())
        picture = self._save_picture(shown, run_dir / PICTURE_FILE)
        self.save(run_dir, stopped=stopped)
        parameters, metadata = self._metadata()
        image = GeneratedImage(shown, self.request.seed, 0, metadata, parameters, path=picture)
        return DreamReport(request=self.request, images=[image], interrupted=stopped == "interrupted", run_dir=run_dir,
                           picture=picture, step=self.step, score=score, stopped=stopped, snapshots=snapshots)

    # -- saving and continuing -------------------------------------------------------------
    def _metadata(self) -> tuple[str, dict]:
        request = self.request
        settings = request.settings() | {"step": self.step, "reverie_version": __version__}
        parameters = a1111_parameters(request.prompt, "", {
            "Steps": self.step, "Seed": request.seed, "Size": f"{request.width}x{request.height}",
            "Generator": request.generator, "Guides": ", ".join(request.guides), "Optimizer": request.optimizer,
            "Prior": prior_for(request.prior, request.generator), "Upscale": request.upscale if request.upscale > 1 else None,
        })
        return parameters, {"format": 1, "seed": self.request.seed, "index": 0, "settings": settings}

    def _save_picture(self, picture: Image.Image, path: Path) -> Path:
        parameters, metadata = self._metadata()
        return save_png(picture, path, parameters, metadata)

    def save(self, run_dir: Path, stopped: str = "running") -> None:
        state = {
            "params": {name: p.detach().cpu().clone() for name, p in self.generator.trainable().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "step": self.step,
            "patience": [self.smoothed, self.best, self.since_best],
        }
        atomic_write(run_dir / STATE_FILE, lambda partial: torch.save(state, partial))
        record = {"settings": self.request.settings(), "step": self.step, "kind": self.kind, "stopped": stopped,
                  "history": self.history, "recoveries": self.recoveries}
        write_text(run_dir / SETTINGS_FILE, json.dumps(record, indent=1))

    @classmethod
    def resume(cls, run_dir: str | Path, device: torch.device | str = "cpu", models: ModelCache | None = None,
               **changes) -> "Dream":
        """The dream saved in `run_dir`, exactly where it stopped; `changes` may give new prompts,
        learning rate, cutouts, patience, ... but not a new generator, size or seed."""
        run_dir = Path(run_dir)
        if not (run_dir / SETTINGS_FILE).is_file() or not (run_dir / STATE_FILE).is_file():
            raise ModelNotFound(f"{run_dir} is not a dream run folder (no {SETTINGS_FILE} and {STATE_FILE})")
        try:
            record = json.loads((run_dir / SETTINGS_FILE).read_text())
            state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        except (ValueError, RuntimeError, OSError, EOFError) as exc:
            raise BadCheckpoint(f"{run_dir} holds a damaged dream ({str(exc).splitlines()[0]})") from None
        settings = record["settings"]
        for name in FIXED_ON_CONTINUE:
            if name in changes and changes[name] is not None and changes[name] != settings[name]:
                raise BadRequest(name, f"a continued dream keeps its {name} ({settings[name]}); start a new dream to change it")
        changes = {k: v for k, v in changes.items() if v is not None and k not in FIXED_ON_CONTINUE}
        # The init image was already used when the dream began.
        settings = {key: value for key, value in settings.items() if key in DreamRequest.model_fields}
        request = DreamRequest.build(**(settings | changes | {"init_image": None, "continue_from": None}))
        dream = cls(request, device, models)
        dream._load_state(state, record)
        if "lr" in changes:
            for group in dream.optimizer.param_groups:
                group["lr"] = request.lr or dream.generator.default_lr
        return dream

    def _load_state(self, state: dict, record: dict) -> None:
        params = self.generator.trainable()
        for name, param in params.items():
            saved = state["params"].get(name)
            if saved is None or saved.shape != param.shape:
                found = "nothing" if saved is None else "x".join(map(str, saved.shape))
                raise BadCheckpoint(
                    f"this dream saved {found} for its generator's {name}, where the {self.kind} generator now has "
                    f"{'x'.join(map(str, param.shape))} (its model changed since the dream began: reverie-mini's "
                    f"autoencoder draws 128 px from v0.8); its pictures are kept, start a new dream to go on")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state["params"][name])
        if record["settings"]["optimizer"] == self.request.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.step = int(state["step"])
        self.smoothed, self.best, self.since_best = state["patience"]
        self.history = record.get("history", [])
        self.recoveries = record.get("recoveries", [])


def centre_zoom(picture: Image.Image, zoom: float) -> Image.Image:
    """The centre 1/zoom of `picture`, enlarged (bicubic) back to its size: one step of a zoom-in."""
    width, height = picture.size
    crop_w, crop_h = round(width / zoom), round(height / zoom)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return picture.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)


CUTOUT_BYTES = 10 * 2**20  # per cutout per guide, with its gradients (the built-in guide takes ~9 MiB)
PRIOR_BYTES = 128 * 2**20  # the prior's UNet pass at its model's size, with gradients
TENSORS_PER_PIXEL = 30  # activations an autoencoder's decoder keeps per channel and pixel for the backward pass


def dream_peak_bytes(network, width: int, height: int, cutouts: int, guides: int, prior: bool) -> int:
    """Peak memory of one dream iteration: the generator's picture with its gradients (an
    autoencoder's decoder keeps its activations at every scale; BigGAN and pixels little per
    pixel), the guides' cutouts, the prior. Measured on reverie-mini: 0.5 GiB at 256 px and
    3.6 GiB at 1024 px, where this says 0.6 and 5.7."""
    channels = getattr(getattr(network, "config", None), "block_out_channels", None)
    if channels:  # a KL or VQ autoencoder: channels at full size, a quarter of the pixels per level below
        per_pixel = 4 * TENSORS_PER_PIXEL * sum(c / 4**level for level, c in enumerate(channels))
    else:
        per_pixel = 256
    return int(per_pixel * width * height + CUTOUT_BYTES * cutouts * guides + (PRIOR_BYTES if prior else 0))


def start_dream(request: DreamRequest | dict, device: torch.device | str = "cpu", models: ModelCache | None = None) -> Dream:
    if isinstance(request, dict):
        request = DreamRequest.build(**request)
    return Dream(request, device, models)
