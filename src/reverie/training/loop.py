"""The training loop every built-in model shares: resumable checkpoints, EMA, progress, samples.

A run folder holds `checkpoint/` (weights, EMA weights, optimizer state, step) written
atomically every `save_every` steps, `samples/` (a picture grid every `sample_every` steps)
and `log.jsonl` (loss and rate). Starting again with the same folder resumes where the last
checkpoint left off.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers.training_utils import EMAModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file


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
    bf16: bool = False  # autocast matmuls to bf16 (CPUs with avx512_bf16, GPUs)
    grad_clip: float = 1.0


StepFn = Callable[[int, torch.Generator], dict]  # (step, rng) -> {"loss": tensor, ...}
SampleFn = Callable[[int, Path], None]


def draw_batch(count: int, batch_size: int, rng: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of one batch out of `count` examples: uniform, or by `weights` (one each), with replacement."""
    if weights is None:
        return torch.randint(0, count, (batch_size,), generator=rng)
    return torch.multinomial(weights, batch_size, replacement=True, generator=rng)


def _lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """Runs `step_fn` for `config.steps` steps on `model`, resuming from `out` when possible."""

    def __init__(self, model: torch.nn.Module, out: str | Path, config: TrainConfig, name: str):
        self.model = model
        self.out = Path(out)
        self.config = config
        self.name = name
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
        )
        self.ema = EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=0.75)
        self.step = 0
        self.out.mkdir(parents=True, exist_ok=True)
        self._resume()

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def _resume(self) -> None:
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        self.model.load_state_dict(load_file(self.checkpoint_dir / "model.safetensors"))
        ema = load_file(self.checkpoint_dir / "ema.safetensors")
        for shadow, key in zip(self.ema.shadow_params, sorted(ema, key=int)):
            shadow.data.copy_(ema[key])
        self.ema.optimization_step = state["ema_steps"]
        optimizer = torch.load(self.checkpoint_dir / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(optimizer)
        self.step = state["step"]

    def save(self) -> None:
        """Write the checkpoint to a fresh folder, then swap it in: a crash never leaves half a checkpoint."""
        tmp = self.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()}, tmp / "model.safetensors")
        save_file({str(i): p.detach().contiguous() for i, p in enumerate(self.ema.shadow_params)}, tmp / "ema.safetensors")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"step": self.step, "ema_steps": self.ema.optimization_step, "config": asdict(self.config), "name": self.name}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        old = self.out / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)

    def ema_model_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the EMA weights in place of the trained ones."""
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ema.restore(self.model.parameters())
        return state

    # -- the loop ---------------------------------------------------------------------------
    def run(self, step_fn: StepFn, sample_fn: SampleFn | None = None, quiet: bool = False) -> None:
        config = self.config
        log = (self.out / "log.jsonl").open("a")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        started, seen, running = time.perf_counter(), 0, None
        with Progress(*columns, disable=quiet) as bar:
            task = bar.add_task(f"train {self.name}", total=config.steps, completed=self.step, info="")
            try:
                while self.step < config.steps:
                    rng = torch.Generator().manual_seed(config.seed * 1_000_003 + self.step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = _lr_at(self.step, config)
                    self.model.train()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                        metrics = step_fn(self.step, rng)
                    loss = metrics["loss"]
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                    self.optimizer.step()
                    self.ema.step(self.model.parameters())
                    self.step += 1
                    seen += config.batch_size
                    value = loss.item()
                    running = value if running is None else 0.98 * running + 0.02 * value
                    rate = seen / (time.perf_counter() - started)
                    bar.update(task, completed=self.step, info=f"loss {running:.4f} · {rate:.0f} img/s")
                    if self.step % 50 == 0:
                        record = {"step": self.step, "loss": running, "img_per_s": rate, "time": time.time()}
                        record.update({k: float(v) for k, v in metrics.items() if k != "loss"})
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if self.step % config.save_every == 0 or self.step == config.steps:
                        self.save()
                    if sample_fn and (self.step % config.sample_every == 0 or self.step == config.steps):
                        self.model.eval()
                        sample_fn(self.step, self.out / "samples")
            except KeyboardInterrupt:
                self.save()  # stopping keeps every finished step
                raise
        log.close()
