"""Training a feed-forward style network for one style (Johnson et al., 2016).

Each step takes a batch of content pictures, paints them with the network and scores the
paintings with the same loss the optimisation uses (models/style_objective.py): content against
the batch's own pictures, Gram matrices against the style picture, total variation. The shared
Trainer makes it resumable bit for bit; the style picture is kept in the run folder
(`style.png`), and the network is exported to RUN/export (models/style_network.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import ReverieError
from ..models.style_features import FeatureNetwork, load_features
from ..models.style_network import StyleNetwork, StyleNetworkConfig, save_style_network
from ..models.style_objective import StyleTargets, style_transfer_loss
from ..outputs.files import atomic_write
from ..outputs.grid import make_grid
from ..pixels import to_pictures, to_tensor
from .loop import Part, TrainConfig, Trainer, draw_batch

STYLE_FILE = "style.png"
SAMPLES = 4  # pictures in each sample grid (before, after)


def kept_style(style: Image.Image, out: Path) -> Image.Image:
    """The run's style picture: written into the run folder when it starts; a resumed run must
    be given the same picture (a run learns one style)."""
    path = out / STYLE_FILE
    style = style.convert("RGB")
    if path.is_file():
        with Image.open(path) as kept:
            kept = kept.convert("RGB")
        if kept.size != style.size or kept.tobytes() != style.tobytes():
            raise ReverieError(f"{out} is training another style ({path}); give that picture, or choose another --out")
        return kept
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda partial: style.save(partial, format="PNG"))
    return style


def train_style_network(style: Image.Image, images: torch.Tensor, out: str | Path, config: TrainConfig,
                        network_config: StyleNetworkConfig, features: FeatureNetwork | None = None,
                        samples: torch.Tensor | None = None, quiet: bool = False) -> StyleNetwork:
    """Train on uint8 content pictures [N, 3, S, S] (S = network_config.size) against `style`
    (resized to S on its longest side); the network comes back on the CPU, with its trained
    weights, and is exported to out/export."""
    out = Path(out)
    style = kept_style(style, out)
    torch.manual_seed(config.seed)
    network = StyleNetwork(network_config)
    trainer = Trainer({"network": _part(network)}, out, config, "style")
    features = (features or load_features(network_config.features)).to(trainer.device)
    side = network_config.size
    scale = side / max(style.size)
    style = style.resize((max(16, round(style.width * scale)), max(16, round(style.height * scale))), Image.LANCZOS)
    targets = StyleTargets.of(features, [to_tensor(style).to(trainer.device)], [1.0])
    show = (samples if samples is not None else images[:SAMPLES]).float().div(255).to(trainer.device)

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(images), config.batch_size, rng)
        content = images[index].float().div(255).to(trainer.device)
        with torch.no_grad():
            content_target = features.features(content)[1]
        painted = network(content)
        loss, parts = style_transfer_loss(features, painted, content_target, targets, network_config.strength,
                                          network_config.smoothness)
        return {"loss": loss, **parts}

    @torch.no_grad()
    def sample(step_index: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        painted = network(show).clamp(0, 1)
        make_grid(to_pictures(show) + to_pictures(painted), columns=len(show)).save(folder / f"style-{step_index:06d}.png")

    trainer.run(step, sample, quiet=quiet)
    network.load_state_dict(trainer.ema_model_state())
    network = network.cpu().eval()
    network.config.steps = trainer.step
    save_style_network(network, out / "export")
    return network


def _part(network: StyleNetwork) -> Part:
    return Part(network, ema=False, schedule="constant")


def content_pictures(data: str | Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train pictures, sample pictures) as uint8 [N, 3, size, size]: a built dataset's train/
    and test/ splits, or a plain folder read whole (its first pictures as samples)."""
    from .data.folder import read_splits

    splits = read_splits(data, size, need_captions=False)
    test = splits.test.images if splits.test is not None and len(splits.test.images) else splits.train.images
    return splits.train.images, test[:SAMPLES]

