"""Growing a trained autoencoder to twice the picture size, keeping its latent space.

reverie-mini's denoiser works on 16x16x4 latents that its f4 autoencoder draws as 64 px
pictures. Training an f8 autoencoder and a new denoiser from scratch would cost days on a CPU;
instead the autoencoder is grown by one level at its full-resolution end:

- the decoder gets one more 2x upsampling after its last level, and one more level of
  residual blocks at the new resolution, so the same 16x16x4 latent is drawn at 128 px;
- the encoder gets one more level at its input, with a 2x downsampling, so a 128 px picture
  is read into the latent its 64 px version had.

Every old weight is kept, and the new parts start as identities (residual blocks whose second
convolution is zero, an upsampling that repeats pixels, a downsampling that averages them), so
the grown model starts as the old one at twice the size and training only has to add detail.
The latent space, its scaling factor and so the denoiser are unchanged.

Training (`train_grown`): the decoder learns to draw the old encoder's latent of a 64 px
picture as the same art at 128 px; the encoder learns to give, for the 128 px picture, the
old encoder's latent of the 64 px one. The 128 px targets are vector art rendered at 128 px,
and for art that exists only at 64 px (Noto, Twemoji) the built-in upscaler's picture (a
teacher, as good as decode-then-upscale was).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..outputs.grid import make_grid
from .autoencoder import balancing_weights, colour_classes, posteriors, reconstruction_loss, to_pil, to_unit_range
from .loop import TrainConfig, Trainer, draw_batch

ENCODER_WEIGHT = 1.0  # of the encoder's latent-matching loss beside the decoder's pixel loss
# The encoder learns on every ENCODER_EVERY-th step only: it starts close (its latents are off by
# about a tenth) and a decoder step at 128 px is already 70 ms a picture on 2 CPU cores.
ENCODER_EVERY = 4


def grown_config(config: dict) -> dict:
    """The old autoencoder's config with one more level of the first level's width, at twice the size."""
    channels = list(config["block_out_channels"])
    levels = len(channels) + 1
    return {
        **{k: v for k, v in config.items() if not k.startswith("_")},
        "block_out_channels": [channels[0], *channels],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "sample_size": 2 * int(config["sample_size"]),
    }


def _identity_resnets(block: torch.nn.Module) -> None:
    for resnet in block.resnets:
        torch.nn.init.zeros_(resnet.conv2.weight)
        torch.nn.init.zeros_(resnet.conv2.bias)


def _identity_kernel(conv: torch.nn.Conv2d, taps: list[tuple[int, int]]) -> None:
    """Each output channel the mean of its own input channel over the given kernel positions."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for channel in range(conv.out_channels):
            for y, x in taps:
                conv.weight[channel, channel, y, x] = 1.0 / len(taps)


def _renamed(key: str) -> str:
    """An old weight's name in the grown model: encoder levels shift up by one; decoder levels keep theirs."""
    if key.startswith("encoder.down_blocks."):
        level, rest = key[len("encoder.down_blocks."):].split(".", 1)
        return f"encoder.down_blocks.{int(level) + 1}.{rest}"
    return key


def grow_autoencoder(vae: AutoencoderKL) -> AutoencoderKL:
    """A new autoencoder at twice `vae`'s picture size with `vae`'s latent space (see the module's text)."""
    grown = AutoencoderKL(**grown_config(dict(vae.config)))
    levels = len(vae.config.block_out_channels)
    state = {_renamed(key): value for key, value in vae.state_dict().items()}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"weights with no place in the grown autoencoder: {unexpected[:4]}")
    new_encoder_level = grown.encoder.down_blocks[0]
    _identity_resnets(new_encoder_level)
    # Downsample2D pads right and bottom by one, then a stride-2 3x3 conv: taps (0..1, 0..1) average 2x2.
    _identity_kernel(new_encoder_level.downsamplers[0].conv, [(0, 0), (0, 1), (1, 0), (1, 1)])
    new_decoder_level = grown.decoder.up_blocks[levels]
    _identity_resnets(new_decoder_level)
    # Upsample2D repeats each pixel 2x2, then a 3x3 conv: the centre tap keeps the repeat.
    _identity_kernel(grown.decoder.up_blocks[levels - 1].upsamplers[0].conv, [(1, 1)])
    expected_new = {k for k in missing if k.startswith(("encoder.down_blocks.0.", f"decoder.up_blocks.{levels}.",
                                                        f"decoder.up_blocks.{levels - 1}.upsamplers."))}
    if set(missing) != expected_new:
        raise ValueError(f"weights the old autoencoder lacks outside the new level: {sorted(set(missing) - expected_new)[:4]}")
    return grown


def halve(images: torch.Tensor) -> torch.Tensor:
    """uint8 pictures at half the size, each pixel the mean of a 2x2 block (as a renderer's antialiasing)."""
    return F.avg_pool2d(images.float(), 2).round().to(torch.uint8)


@torch.no_grad()
def teacher_pictures(images: torch.Tensor, upscaler: torch.nn.Module, batch_size: int = 64) -> torch.Tensor:
    """uint8 pictures at twice the size for art that exists only small: the 4x upscaler's (on its device), halved."""
    out = []
    device = next(upscaler.parameters()).device
    for i in range(0, len(images), batch_size):
        large = upscaler(to_unit_range(images[i : i + batch_size]).to(device)).clamp(-1, 1).cpu()
        out.append(halve(((large + 1) * 127.5).round().to(torch.uint8)))
    return torch.cat(out)


def grown_loss(grown: AutoencoderKL, large: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, rng: torch.Generator,
               latent_noise: float = 0.25, with_encoder: bool = True) -> dict:
    """Pixels of the decoder at the large size, plus (`with_encoder`) the encoder's distance to the old latent."""
    z = mean + latent_noise * std * torch.randn(mean.shape, generator=rng).to(mean.device)
    pixels, l1 = reconstruction_loss(grown.decode(z).sample.float(), large)
    if not with_encoder:
        return {"loss": pixels, "l1": l1.detach()}
    encoder = F.mse_loss(grown.encode(large).latent_dist.mean.float(), mean)
    return {"loss": pixels + ENCODER_WEIGHT * encoder, "l1": l1.detach(), "enc": encoder.detach()}


def train_grown(old: AutoencoderKL, large: torch.Tensor, out: str | Path, config: TrainConfig,
                held_out: torch.Tensor | None = None, quiet: bool = False, balance_colours: bool = True) -> AutoencoderKL:
    """Grow `old` and train it on uint8 pictures `large` [N,3,2S,2S] (S: old's size); return the EMA model.

    The old encoder's posteriors of the halved pictures (and of their mirror images) are the
    latents, computed once. With `balance_colours`, rare main colours are drawn more often.
    Training runs on `config.device` (`old` moves there too); the grown model comes back on the CPU.
    """
    torch.manual_seed(config.seed)
    both = torch.cat([large, large.flip(-1)])
    small = halve(both)
    grown = grow_autoencoder(old)
    trainer = Trainer(grown, out, config, "grown")
    device = trainer.device
    old.to(device)
    mean, std = posteriors(old.eval(), small)
    weights = balancing_weights(colour_classes(small)) if balance_colours else torch.ones(len(both))
    show = (held_out if held_out is not None else large)[:8]
    show_mean = posteriors(old, halve(show))[0].to(device)

    @torch.no_grad()
    def sample(step_index: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        before = F.interpolate(old.decode(show_mean).sample, scale_factor=2, mode="bicubic", align_corners=False)
        after = grown.decode(show_mean).sample
        make_grid(to_pil(to_unit_range(show)) + to_pil(before) + to_pil(after), columns=len(show)).save(
            folder / f"grown-{step_index:06d}.png")

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(both), config.batch_size, rng, weights)
        return grown_loss(grown, to_unit_range(both[index]).to(device), mean[index].to(device), std[index].to(device),
                          rng, with_encoder=step_index % ENCODER_EVERY == 0)

    trainer.run(step, sample, quiet=quiet)
    grown.load_state_dict(trainer.ema_model_state())
    return grown.cpu().eval()
