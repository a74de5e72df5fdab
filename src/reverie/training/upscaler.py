"""Training the built-in upscalers on pairs of the same art at 1/scale and full resolution.

High-resolution targets come only from vector sources (rendered natively at the large size);
the low-resolution input is the target shrunk with an antialiased filter, as a small
generation looks. Loss: L1 on pixels plus L1 on image gradients, for crisp edges. The x2
network starts from a trained x4 one (`x2_from_x4`): the same features, one doubling fewer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.upscaler import Upscaler
from ..outputs.grid import make_grid
from .autoencoder import _gradients, to_pil, to_unit_range
from .loop import TrainConfig, Trainer, draw_batch

PATCH = 128  # high-resolution crop side; the input crop is PATCH / 4


def shrink(images: torch.Tensor, scale: int = 4) -> torch.Tensor:
    h, w = images.shape[-2:]
    return F.interpolate(images, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def upscaler_loss(model: Upscaler, high: torch.Tensor) -> dict:
    restored = model(shrink(high, model.scale)).float()
    l1 = F.l1_loss(restored, high)
    edges = sum(F.l1_loss(a, b) for a, b in zip(_gradients(restored), _gradients(high)))
    return {"loss": l1 + 0.5 * edges, "l1": l1.detach()}


def x2_from_x4(x4: Upscaler) -> Upscaler:
    """An x2 upscaler holding the x4 one's layers: its head, body and first doubling, and its
    last convolution (which then sees features at twice, not four times, the input's size)."""
    x2 = Upscaler(scale=2)
    weights = {k: v for k, v in x4.state_dict().items() if not k.startswith(("up.3.", "up.6."))}
    weights |= {k.replace("up.6.", "up.3."): v for k, v in x4.state_dict().items() if k.startswith("up.6.")}
    x2.load_state_dict(weights)
    return x2


def train_upscaler(images: torch.Tensor, out: str | Path, config: TrainConfig, quiet: bool = False,
                   scale: int = 4, start: Upscaler | None = None) -> Upscaler:
    """Train an x`scale` upscaler on uint8 high-resolution pictures [N,3,S,S] (S >= PATCH) on
    `config.device`, from `start`'s weights when given; the model comes back on the CPU."""
    torch.manual_seed(config.seed)
    model = Upscaler(scale=scale)
    if start is not None:
        model.load_state_dict(start.state_dict())
    trainer = Trainer(model, out, config, "upscaler")
    side = images.shape[-1]
    show = to_unit_range(images[:4]).to(trainer.device)

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(images), config.batch_size, rng)
        y, x = torch.randint(0, side - PATCH + 1, (2,), generator=rng).tolist()
        crops = to_unit_range(images[index, :, y : y + PATCH, x : x + PATCH]).to(trainer.device)
        return upscaler_loss(model, crops)

    @torch.no_grad()
    def sample(step_index: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        low = shrink(show, scale)
        bicubic = F.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False)
        make_grid(to_pil(bicubic) + to_pil(model(low)) + to_pil(show), columns=len(show)).save(
            folder / f"upscaler-x{scale}-{step_index:06d}.png")

    trainer.run(step, sample, quiet=quiet)
    model.load_state_dict(trainer.ema_model_state())
    return model.cpu().eval()
