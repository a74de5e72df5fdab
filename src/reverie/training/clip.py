"""Training the built-in CLIP's image side against frozen MiniLM sentence embeddings.

Contrastive (InfoNCE, both directions) on the dataset's pictures and caption lines; only the
image encoder and the temperature learn. Text vectors are computed once for every caption.

`robust` training shows each picture as dreaming's cutouts show it (a random part of it, zoomed,
with pixel noise). It was meant to make a CLIP whose gradients lead dreams to shapes; measured,
it does not (its dreams are patches of colour), but it judges clean pictures nearly as well as
plain training and ships as the built-in judge (docs/mini-eval.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.mini_clip import ImageEncoder
from ..models.minilm import sentence_embeddings
from .autoencoder import random_mirror, to_unit_range
from .loop import TrainConfig, Trainer, draw_batch


def caption_table(captions: list[list[str]], tokenizer, text_encoder) -> tuple[torch.Tensor, list[list[int]]]:
    """Unique caption vectors, and for each picture the rows of its caption lines."""
    unique = sorted({line for lines in captions for line in lines})
    row = {text: i for i, text in enumerate(unique)}
    vectors = sentence_embeddings(unique, tokenizer, text_encoder)
    return vectors, [[row[line] for line in lines] for lines in captions]


def augment(batch: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Small shifts and mirror images: the same thing, drawn a little differently."""
    _, _, h, w = batch.shape
    batch = random_mirror(batch, rng)
    pad = h // 8
    padded = F.pad(batch, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=rng).tolist()
    return padded[..., dy : dy + h, dx : dx + w]


ROBUST_ZOOM = (0.6, 1.1)  # the side of the view, as a fraction of the picture's (above 1: zoomed out)
ROBUST_NOISE = 0.3  # the largest pixel-noise standard deviation, in [-1, 1] units


def robust_augment(batch: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Per picture: a mirror image, a random square view (zoomed in or out, anywhere) and noise."""
    n = batch.shape[0]
    batch = random_mirror(batch, rng)
    low, high = ROBUST_ZOOM
    side = low + (high - low) * torch.rand(n, generator=rng)
    centre = (torch.rand(n, 2, generator=rng) * 2 - 1) * (1 - side).abs()[:, None]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    views = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sigma = torch.rand(n, 1, 1, 1, generator=rng) * ROBUST_NOISE
    return views + sigma * torch.randn(views.shape, generator=rng)


def clip_loss(encoder: ImageEncoder, images: torch.Tensor, texts: torch.Tensor) -> dict:
    image_vectors = encoder(images)
    logits = encoder.logit_scale.exp().clamp(max=100) * image_vectors @ texts.T
    target = torch.arange(len(images), device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    accuracy = (logits.argmax(1) == target).float().mean()
    return {"loss": loss, "accuracy": accuracy.detach()}


def train_clip(images: torch.Tensor, captions: list[list[str]], tokenizer, text_encoder, out: str | Path,
               config: TrainConfig, quiet: bool = False, robust: bool = False) -> ImageEncoder:
    """Train on uint8 pictures [N,3,S,S] and their caption lines on `config.device`; the encoder comes back on the CPU."""
    torch.manual_seed(config.seed)
    encoder = ImageEncoder()
    vectors, rows = caption_table(captions, tokenizer, text_encoder)
    trainer = Trainer(encoder, out, config, "clip")
    vectors = vectors.to(trainer.device)

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(images), config.batch_size, rng).tolist()
        picks = torch.randint(0, 1 << 30, (len(index),), generator=rng).tolist()
        text_rows = torch.tensor([rows[i][p % len(rows[i])] for i, p in zip(index, picks)])
        batch = (robust_augment if robust else augment)(to_unit_range(images[index]), rng)
        return clip_loss(encoder, batch.to(trainer.device), vectors[text_rows.to(trainer.device)])

    trainer.run(step, None, quiet=quiet)
    encoder.load_state_dict(trainer.ema_model_state())
    return encoder.cpu().eval()
