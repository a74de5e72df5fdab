"""Training the built-in autoencoder: pictures <-> small latents, as Stable Diffusion's VAE.

A KL autoencoder (diffusers AutoencoderKL) trained with an L1 reconstruction loss, an L1 loss
on image gradients (keeps outlines crisp, which icons are made of) and a very small KL term
(keeps the latent space smooth for diffusion). No adversarial loss: on a CPU budget it costs
more than it gives for flat-coloured art.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from ..outputs.grid import make_grid
from ..pixels import to_pictures
from .loop import TrainConfig, Trainer, draw_batch

KL_WEIGHT = 1e-6
EDGE_WEIGHT = 0.5


def build_autoencoder(size: int = 64, channels: tuple[int, ...] = (32, 64, 128)) -> AutoencoderKL:
    """An f4 autoencoder (two downsamplings) with 4 latent channels: 64 px -> 16x16x4."""
    levels = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=size,
    )


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def random_mirror(batch: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each picture mirrored left-right with probability 1/2: more shapes for free."""
    flip = torch.rand(batch.shape[0], generator=rng) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """float [N,3,H,W] in [-1, 1] -> pictures."""
    return to_pictures(tensor, -1.0, 1.0)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def reconstruction_loss(recon: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 on pixels + EDGE_WEIGHT x L1 on image gradients, the pixel L1 alone)."""
    l1 = F.l1_loss(recon, batch)
    edges = sum(F.l1_loss(a, b) for a, b in zip(_gradients(recon), _gradients(batch)))
    return l1 + EDGE_WEIGHT * edges, l1


def autoencoder_loss(vae: AutoencoderKL, batch: torch.Tensor, rng: torch.Generator) -> dict:
    posterior = vae.encode(batch).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=rng).to(posterior.mean.device)
    z = posterior.mean + posterior.std * noise
    loss, l1 = reconstruction_loss(vae.decode(z).sample.float(), batch)
    kl = posterior.kl().mean()  # summed over a picture's latent, averaged over the batch, as in SD
    return {"loss": loss + KL_WEIGHT * kl, "l1": l1.detach(), "kl": kl.detach()}


def train_autoencoder(images: torch.Tensor, out: str | Path, config: TrainConfig, held_out: torch.Tensor | None = None,
                      quiet: bool = False, init: str | Path | None = None, balance_colours: bool = False) -> AutoencoderKL:
    """Train on uint8 pictures [N,3,S,S]; samples compare held-out pictures with their reconstructions.

    `init`, a diffusers autoencoder folder, starts from those weights instead of random ones (a
    fine-tune; the latent space moves, so a denoiser trained on the old one needs fine-tuning
    too). `balance_colours` draws pictures more often the rarer their main colour is, as
    `finetune_decoder` does. A run folder with a checkpoint resumes from it either way.
    Training runs on `config.device`; the model comes back on the CPU.
    """
    torch.manual_seed(config.seed)
    if init is not None:
        vae = AutoencoderKL.from_pretrained(init, local_files_only=True, dtype=torch.float32)
    else:
        vae = build_autoencoder(images.shape[-1])
    weights = balancing_weights(colour_classes(images)) if balance_colours else None
    trainer = Trainer(vae, out, config, "autoencoder")
    show = to_unit_range((held_out if held_out is not None else images)[:8]).to(trainer.device)

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(images), config.batch_size, rng, weights)
        batch = random_mirror(to_unit_range(images[index]), rng).to(trainer.device)
        return autoencoder_loss(vae, batch, rng)

    return _run(trainer, vae, step, show, quiet)


def _run(trainer: Trainer, vae: AutoencoderKL, step, show: torch.Tensor, quiet: bool) -> AutoencoderKL:
    """Run the trainer with sample grids (held-out pictures over their reconstructions); return the EMA model on the CPU."""

    @torch.no_grad()
    def sample(step_index: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        recon = vae.decode(vae.encode(show).latent_dist.mean).sample
        make_grid(to_pil(show) + to_pil(recon), columns=len(show)).save(folder / f"{trainer.name}-{step_index:06d}.png")

    trainer.run(step, sample, quiet=quiet)
    vae.load_state_dict(trainer.ema_model_state())
    return vae.cpu().eval()


def freeze_encoder(vae: AutoencoderKL) -> AutoencoderKL:
    """Fix the encoder side, so the latent space (and any denoiser trained on it) stays as it is."""
    for part in (vae.encoder, vae.quant_conv):
        if part is not None:
            part.requires_grad_(False)
    return vae


@torch.no_grad()
def posteriors(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the encoder's posterior for uint8 pictures [N,3,S,S], unscaled, on the CPU.

    The pictures are encoded on the autoencoder's device, a batch at a time.
    """
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        posterior = vae.encode(to_unit_range(images[i : i + batch_size]).to(vae.device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def decoder_loss(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor, batch: torch.Tensor, rng: torch.Generator,
                 latent_noise: float = 1.0, droplet_weight: float = 0.0) -> dict:
    """The reconstruction loss with the encoder's posteriors given (the encoder is fixed).

    The latents are drawn with `latent_noise` times the posterior's spread: 1 as in training the
    whole autoencoder, 0 to decode the posterior means themselves, which is what the denoiser learned.
    With `droplet_weight`, `droplet_penalty` on the decoder's upper levels is added.
    """
    z = mean + latent_noise * std * torch.randn(mean.shape, generator=rng).to(mean.device)
    with upper_levels(vae.decoder) as levels:
        loss, l1 = reconstruction_loss(vae.decode(z).sample.float(), batch)
    if not droplet_weight:
        return {"loss": loss, "l1": l1.detach()}
    droplet = droplet_penalty(levels)
    return {"loss": loss + droplet_weight * droplet, "l1": l1.detach(), "droplet": droplet.detach()}


# A decoder level's strongest spot may stand this many times above the level's mean activation
# before `droplet_penalty` counts it; outlines on flat colour reach about 3.
DROPLET_LIMIT = 4.0


@contextmanager
def upper_levels(decoder: torch.nn.Module, count: int = 3):
    """Collects the outputs of the decoder's last `count` up blocks (its largest sizes) while in the block."""
    outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda module, inputs, output: outputs.append(output))
             for block in decoder.up_blocks[-count:]]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def droplet_ratio(activation: torch.Tensor) -> torch.Tensor:
    """[N]: each picture's strongest activation (norm over channels) over its mean one, at one decoder level."""
    norms = activation.float().norm(dim=1).flatten(1)
    return norms.amax(1) / norms.mean(1).clamp(min=1e-6)


def droplet_penalty(levels: list[torch.Tensor]) -> torch.Tensor:
    """How far (in log) each level's strongest spot stands above DROPLET_LIMIT x its mean, averaged.

    A decoder whose last levels are group-normalised can learn a "droplet": one spot of huge
    activations that sets the GroupNorm statistics for the whole picture (Karras et al. found
    the same in StyleGAN, 2020). The layers after it mostly hide it, but not wholly: reverie-mini
    drew it as a multicoloured speck in the same place in every picture. Fine-tuning with this
    penalty makes the decoder draw without one (docs/mini-eval.md, "The speck").
    """
    return torch.stack([F.relu(droplet_ratio(a).log() - math.log(DROPLET_LIMIT)).mean() for a in levels]).mean()


def colour_classes(images: torch.Tensor, white: int = 235) -> torch.Tensor:
    """A class per uint8 picture [N,3,S,S] from its foreground's mean colour: 12 hues, or dark/grey/light.

    Foreground is every pixel not near the white page. Pictures with no foreground count as light.
    """
    x = images.float() / 255
    foreground = (images < white).any(dim=1, keepdim=True).float()
    area = foreground.sum(dim=(2, 3))
    rgb = (x * foreground).sum(dim=(2, 3)) / area.clamp(min=1)
    rgb = torch.where(area > 0, rgb, torch.ones_like(rgb))
    high, low = rgb.max(dim=1).values, rgb.min(dim=1).values
    saturation = (high - low) / high.clamp(min=1e-6)
    r, g, b = rgb.unbind(1)
    hue = torch.atan2(3**0.5 * (g - b), 2 * r - g - b) % (2 * torch.pi)
    hue_class = (hue / (2 * torch.pi) * 12).long().clamp(max=11)
    grey_class = 12 + (high > 0.35).long() + (high > 0.75).long()
    return torch.where((saturation > 0.25) & (high > 0.15), hue_class, grey_class)


def balancing_weights(classes: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """Sampling weights that favour rare classes: each picture 1 / (its class's count) ** power."""
    counts = torch.bincount(classes).float()
    return counts[classes] ** -power


def finetune_decoder(vae: AutoencoderKL, images: torch.Tensor, out: str | Path, config: TrainConfig,
                     held_out: torch.Tensor | None = None, quiet: bool = False, latent_noise: float = 0.25,
                     balance_colours: bool = True, droplet_weight: float = 0.0) -> AutoencoderKL:
    """Train only the decoder of a trained autoencoder further.

    The encoder is frozen, so every latent keeps its meaning and a denoiser trained on this
    autoencoder needs no retraining: only how latents are drawn as pixels improves (colours
    and edges that a short first run left approximate). Pictures and their mirror images are
    encoded once up front; each step then costs a decoder pass alone.

    With `balance_colours`, pictures are drawn more often the rarer their main colour is
    (`colour_classes`): emoji are mostly yellow, orange and brown, and a decoder trained on
    them evenly learns to paint green and purple brown and grey.

    `droplet_weight` adds `droplet_penalty`: the fine-tune that removed mini's speck.
    """
    torch.manual_seed(config.seed)
    freeze_encoder(vae)
    trainer = Trainer(vae, out, config, "decoder")  # on its device now; the frozen encoder is as it was
    both = torch.cat([images, images.flip(-1)])
    mean, std = posteriors(vae.eval(), both)
    weights = balancing_weights(colour_classes(both)) if balance_colours else torch.ones(len(both))
    show = to_unit_range((held_out if held_out is not None else images)[:8]).to(trainer.device)

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(both), config.batch_size, rng, weights)
        device = trainer.device
        return decoder_loss(vae, mean[index].to(device), std[index].to(device), to_unit_range(both[index]).to(device),
                            rng, latent_noise, droplet_weight)

    return _run(trainer, vae, step, show, quiet)


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> float:
    """1 / std of the latents, so diffusion sees unit-variance latents (SD's 0.18215 for its VAE)."""
    latents = encode_all(vae, images, batch_size, scale=1.0)
    return float(1.0 / latents.std())


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256, scale: float | None = None) -> torch.Tensor:
    """Posterior means of every picture, multiplied by the scaling factor."""
    scale = vae.config.scaling_factor if scale is None else scale
    return posteriors(vae, images, batch_size)[0] * scale
