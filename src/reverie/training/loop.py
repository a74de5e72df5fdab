"""The training loop every built-in model shares: resumable checkpoints, EMA, progress, samples.

A run trains one or more named parts, each a model with its own optimizer (AdamW), learning-rate
schedule and, optionally, EMA weights: one part for the autoencoder, the denoiser, CLIP and the
upscaler; a generator and a discriminator for a GAN. The step function computes the losses and
hands each to `Trainer.update(part, loss)`, which back-propagates it into that part alone and
steps that part's optimizer, so a GAN can update its discriminator and then its generator
against the updated discriminator within one step. A one-part step function may instead return
its loss as {"loss": ...}.

A run folder holds `checkpoint/` (per part: weights, EMA weights, optimizer state; the step)
written atomically every `save_every` steps, `samples/` (a picture grid every `sample_every`
steps) and `log.jsonl` (losses and rate). Starting again with the same folder resumes where the
last checkpoint left off, bit for bit on the CPU. Checkpoints hold CPU tensors only, so a run
trained on a GPU resumes or exports on the CPU, and the other way round. The models and batches
live on `config.device` (training/device.py); randomness is drawn on the CPU.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
from accelerate.utils import send_to_device
from diffusers.training_utils import EMAModel
from rich.progress import TextColumn
from safetensors.torch import load_file, save_file

from ..errors import ReverieError
from ..progress import Interrupted
from ..terminal import progress_bar
from .device import Precision, training_device


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 32
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    save_every: int = 500
    sample_every: int = 1000
    seed: int = 0
    bf16: bool = False  # autocast to bf16 (CPUs with avx512_bf16, GPUs)
    grad_clip: float = 1.0
    fp16: bool = False  # autocast to fp16 with loss scaling (CUDA GPUs)
    device: str = "cpu"  # auto, cpu, cuda, cuda:N, mps; `reverie train` asks for auto


StepFn = Callable[[int, torch.Generator], dict]  # (step, rng) -> {"loss": tensor, ...} or metrics after update()
SampleFn = Callable[[int, Path], None]


def draw_batch(count: int, batch_size: int, rng: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of one batch out of `count` examples: uniform, or by `weights` (one each), with replacement."""
    if weights is None:
        return torch.randint(0, count, (batch_size,), generator=rng)
    return torch.multinomial(weights, batch_size, replacement=True, generator=rng)


def cosine_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def constant_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up, then the same rate to the end (as GANs are often trained)."""
    return lr * (step + 1) / warmup if step < warmup else lr


SCHEDULES = {"cosine": cosine_lr, "constant": constant_lr}


@dataclass
class Part:
    """One model a run trains, and how it learns; a setting left None is the run's TrainConfig's."""

    module: torch.nn.Module
    lr: Optional[float] = None
    warmup: Optional[int] = None
    schedule: str = "cosine"  # a name in SCHEDULES
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: Optional[float] = None
    grad_clip: Optional[float] = None
    ema: bool = True  # keep EMA weights (at the run's ema_decay); without them ema_model_state gives the trained ones


class _Learner:
    """A part on its device with its optimizer, EMA weights, loss scaler and this step's losses."""

    def __init__(self, name: str, part: Part, config: TrainConfig, precision: Precision):
        if part.schedule not in SCHEDULES:
            raise ValueError(f"part {name!r}: unknown schedule {part.schedule!r}; one of {', '.join(SCHEDULES)}")
        self.name, self.part, self.precision = name, part, precision
        self.module = part.module.to(precision.device)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"part {name!r} has no trainable parameters")
        self.lr = config.lr if part.lr is None else part.lr
        self.warmup = config.warmup if part.warmup is None else part.warmup
        self.grad_clip = config.grad_clip if part.grad_clip is None else part.grad_clip
        weight_decay = config.weight_decay if part.weight_decay is None else part.weight_decay
        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, betas=part.betas, weight_decay=weight_decay)
        self.ema = None
        if part.ema:
            self.ema = EMAModel(self.module.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=0.75)
        self.scaler = precision.grad_scaler()
        self.losses: list[torch.Tensor] = []

    def set_lr(self, step: int, steps: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = SCHEDULES[self.part.schedule](step, self.lr, self.warmup, steps)

    def learn(self, loss: torch.Tensor) -> None:
        # Backward outside autocast, as torch advises; gradients reach this part's parameters only.
        with self.precision.autocast(enabled=False):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward(inputs=self.params)
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.ema is not None:
            self.ema.step(self.module.parameters())
        self.losses.append(loss.detach())

    def step_loss(self) -> float | None:
        """This step's loss (the mean when the part learned more than once), and a clean slate."""
        if not self.losses:
            return None
        value = sum(loss.item() for loss in self.losses) / len(self.losses)
        self.losses.clear()
        return value

    # -- checkpoints: CPU tensors only, whatever the device ---------------------------------
    def save(self, folder: Path) -> dict:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()},
                  folder / f"{self.name}.safetensors")
        if self.ema is not None:
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(self.ema.shadow_params)},
                      folder / f"{self.name}.ema.safetensors")
        torch.save(send_to_device(self.optimizer.state_dict(), "cpu"), folder / f"{self.name}.optimizer.pt")
        return {"ema_steps": self.ema.optimization_step if self.ema is not None else None,
                "scaler": self.scaler.state_dict()}

    def load(self, weights: Path, ema: Path, optimizer: Path, state: dict) -> None:
        self.module.load_state_dict(load_file(weights))
        if self.ema is not None and ema.is_file():
            shadows = load_file(ema)
            for shadow, key in zip(self.ema.shadow_params, sorted(shadows, key=int)):
                shadow.data.copy_(shadows[key])
            self.ema.optimization_step = state["ema_steps"]
        # Loaded on the CPU; the optimizer moves its state to its parameters' device.
        self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu", weights_only=True))
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def ema_state(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.ema.store(self.module.parameters())
        self.ema.copy_to(self.module.parameters())
        state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.ema.restore(self.module.parameters())
        return state


class Trainer:
    """Runs a step function for `config.steps` steps on one model or on named parts, resuming from `out`.

    `parts`: a module (one part, named "model"), or {name: Part(module, ...) or module}. The
    modules are moved to `config.device` (`trainer.device`); step functions move their batches there.
    """

    def __init__(self, parts: Union[torch.nn.Module, Mapping[str, Union[Part, torch.nn.Module]]], out: str | Path,
                 config: TrainConfig, name: str):
        if isinstance(parts, torch.nn.Module):
            parts = {"model": parts}
        if not parts:
            raise ValueError("a run needs at least one part to train")
        for key in parts:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
                raise ValueError(f"part name {key!r}: use letters, digits, '-' and '_' (it names checkpoint files)")
        self.out = Path(out)
        self.config = config
        self.name = name
        self.device = training_device(config.device)
        self.precision = Precision.choose(self.device, config.bf16, config.fp16)
        self.parts = {key: _Learner(key, part if isinstance(part, Part) else Part(part), config, self.precision)
                      for key, part in parts.items()}
        self.step = 0
        self.out.mkdir(parents=True, exist_ok=True)
        self._resume()

    def module(self, part: str | None = None) -> torch.nn.Module:
        return self._learner(part).module

    def _learner(self, part: str | None) -> _Learner:
        if part is None:
            if len(self.parts) != 1:
                raise ValueError(f"name the part: this run trains {', '.join(self.parts)}")
            return next(iter(self.parts.values()))
        return self.parts[part]

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def _resume(self) -> None:
        folder = self.checkpoint_dir
        state_file = folder / "state.json"
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        if state.get("name", self.name) != self.name:
            raise ReverieError(f"{self.out} holds a {state['name']} run, not a {self.name} run; choose another --out")
        if "parts" in state:
            parts = state["parts"]
            files = {key: (folder / f"{key}.ema.safetensors", folder / f"{key}.optimizer.pt") for key in parts}
        else:  # written before runs had parts: one model, its EMA and optimizer files unprefixed
            parts = {"model": {"ema_steps": state["ema_steps"]}}
            files = {"model": (folder / "ema.safetensors", folder / "optimizer.pt")}
        if set(parts) != set(self.parts):
            raise ReverieError(f"{folder} holds the parts {', '.join(sorted(parts))}, not {', '.join(sorted(self.parts))}; "
                               f"choose another --out")
        for key, learner in self.parts.items():
            learner.load(folder / f"{key}.safetensors", *files[key], parts[key])
        self.step = state["step"]

    def save(self) -> None:
        """Write the checkpoint to a fresh folder, then swap it in: a crash never leaves half a checkpoint."""
        tmp = self.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        parts = {key: learner.save(tmp) for key, learner in self.parts.items()}
        state = {"step": self.step, "name": self.name, "parts": parts, "config": asdict(self.config)}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        old = self.out / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)

    def ema_model_state(self, part: str | None = None) -> dict[str, torch.Tensor]:
        """A part's state dict (on its device) with the EMA weights in place of the trained ones."""
        return self._learner(part).ema_state()

    # -- the loop ---------------------------------------------------------------------------
    def update(self, part: str, loss: torch.Tensor) -> None:
        """Back-propagate `loss` into `part` alone, then step its optimizer and its EMA weights.

        Called by the step function once for each part that learns in that step, in the order
        the method needs (a GAN: the discriminator, then the generator against the updated
        discriminator). No other part's parameters get gradients, so a loss may run through
        another part's network; each loss needs a graph of its own.
        """
        self.parts[part].learn(loss)

    def run(self, step_fn: StepFn, sample_fn: SampleFn | None = None, quiet: bool = False,
            on_step: Callable[[int], None] | None = None) -> None:
        """Train from the current step to `config.steps`.

        Each step runs `step_fn(step, rng)` under the run's autocast, with `rng` a CPU generator
        seeded by the run's seed and the step (so a resumed run draws what an uninterrupted one
        would); it returns metrics to log. The run saves every `save_every` steps and at the
        end, calls `sample_fn(step, out/samples)` every `sample_every` steps and at the end, then
        `on_step(step)` (a job's progress; it raises `Interrupted` to stop the run), and saves
        before it lets Ctrl-C or `Interrupted` through.
        """
        config = self.config
        log = (self.out / "log.jsonl").open("a")
        started, seen, running = time.perf_counter(), 0, {}
        only = next(iter(self.parts)) if len(self.parts) == 1 else None
        with progress_bar(None, TextColumn("{task.fields[info]}"), disable=quiet) as bar:
            task = bar.add_task(f"train {self.name}", total=config.steps, completed=self.step, info="")
            try:
                while self.step < config.steps:
                    rng = torch.Generator().manual_seed(config.seed * 1_000_003 + self.step)
                    for learner in self.parts.values():
                        learner.set_lr(self.step, config.steps)
                        learner.module.train()
                    with self.precision.autocast():
                        metrics = step_fn(self.step, rng) or {}
                    if "loss" in metrics and not any(learner.losses for learner in self.parts.values()):
                        if only is None:
                            raise ValueError("a run of several parts learns through trainer.update(part, loss)")
                        self.update(only, metrics["loss"])
                    self.step += 1
                    seen += config.batch_size
                    for key, learner in self.parts.items():
                        value = learner.step_loss()
                        if value is not None:
                            running[key] = value if key not in running else 0.98 * running[key] + 0.02 * value
                    rate = seen / (time.perf_counter() - started)
                    losses = {("loss" if only else f"{key}_loss"): value for key, value in running.items()}
                    shown = [f"{'loss' if only else key} {value:.4f}" for key, value in running.items()]
                    bar.update(task, completed=self.step, info=" · ".join([*shown, f"{rate:.0f} img/s"]))
                    if self.step % 50 == 0:
                        record = {"step": self.step, **losses, "img_per_s": rate, "time": time.time()}
                        record.update({k: float(v) for k, v in metrics.items() if k != "loss"})
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if self.step % config.save_every == 0 or self.step == config.steps:
                        self.save()
                    if sample_fn and (self.step % config.sample_every == 0 or self.step == config.steps):
                        for learner in self.parts.values():
                            learner.module.eval()
                        sample_fn(self.step, self.out / "samples")
                    if on_step is not None:
                        on_step(self.step)
            except (KeyboardInterrupt, Interrupted):
                self.save()  # stopping keeps every finished step
                raise
        log.close()
