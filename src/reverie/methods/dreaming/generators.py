"""Generators: what the dream optimizes, and how it turns into pixels.

Each generator owns a few trainable tensors (`trainable()`), draws a picture from them
(`forward() -> [1,3,H,W]` in [0,1]) and, where it can, starts from a picture (`set_image`).
The frozen network behind it (an autoencoder's decoder, BigGAN) is kept out of the module's
parameters, so the dream's state is only what it optimizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import BadRequest


class Generator(torch.nn.Module):
    kind: str = ""
    default_lr: float = 0.1
    can_start_from_image = True

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.named_parameters())

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to keep latents in range)."""

    def set_image(self, pixels: torch.Tensor) -> None:
        raise BadRequest("init_image", f"the {self.kind} generator cannot start from a picture; use another generator")


class PixelGenerator(Generator):
    """Raw pixels, parameterized by their Fourier spectrum scaled toward low frequencies.

    Plain pixel optimization makes high-frequency noise; scaling each frequency by 1/f makes
    every step change the picture smoothly, as Lucid's feature visualizations did.
    """

    kind, default_lr = "pixels", 0.2

    def __init__(self, height: int, width: int, generator: torch.Generator):
        super().__init__()
        fy = torch.fft.fftfreq(height).view(-1, 1)
        fx = torch.fft.rfftfreq(width).view(1, -1)
        frequency = torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / max(height, width))
        self.register_buffer("scale", (1.0 / frequency) / max(height, width) * 4, persistent=False)
        self.height, self.width = height, width
        shape = (1, 3, height, width // 2 + 1, 2)
        self.spectrum = torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.1)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        logits = torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho")
        return torch.sigmoid(logits)

    @torch.no_grad()
    def set_image(self, pixels: torch.Tensor) -> None:
        logits = torch.logit(pixels.clamp(0.005, 0.995))
        spectrum = torch.fft.rfft2(logits, norm="ortho") / self.scale
        self.spectrum.copy_(torch.view_as_real(spectrum))


def _latent_grid(network, height: int, width: int, what: str) -> tuple[int, int]:
    """(rows, cols) of the latent grid for a picture of height x width; refuses sizes it cannot make."""
    factor = 2 ** (len(network.config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise BadRequest("width", f"{what} needs sizes that are multiples of {factor}")
    return height // factor, width // factor


class LatentGenerator(Generator):
    """The latent space of a KL autoencoder (reverie-mini's, Stable Diffusion's VAE, ...)."""

    kind, default_lr = "latent", 0.2

    def __init__(self, vae, height: int, width: int, generator: torch.Generator):
        super().__init__()
        rows, cols = _latent_grid(vae, height, width, "this autoencoder")
        object.__setattr__(self, "vae", vae)  # frozen; not part of the dream's parameters
        # Small random latents decode to a nearly plain picture that CLIP then shapes.
        spread = 0.3 / float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        shape = (1, vae.config.latent_channels, rows, cols)
        self.latents = torch.nn.Parameter(torch.randn(shape, generator=generator) * spread)

    def forward(self) -> torch.Tensor:
        decoded = self.vae.decode(self.latents.to(self.vae.dtype)).sample.float()
        return (decoded.clamp(-1, 1) + 1) / 2

    @torch.no_grad()
    def set_image(self, pixels: torch.Tensor) -> None:
        posterior = self.vae.encode((pixels * 2 - 1).to(self.vae.dtype)).latent_dist
        self.latents.copy_(posterior.mean.float())


class VQGANGenerator(Generator):
    """A VQGAN's latents: continuous vectors snapped to the codebook on the way to the decoder."""

    kind, default_lr = "vqgan", 0.1

    def __init__(self, vqmodel, height: int, width: int, generator: torch.Generator):
        super().__init__()
        rows, cols = _latent_grid(vqmodel, height, width, "this VQGAN")
        object.__setattr__(self, "vq", vqmodel)
        codebook = vqmodel.quantize.embedding.weight.detach().float()
        self.register_buffer("low", codebook.min(0).values.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("high", codebook.max(0).values.view(1, -1, 1, 1), persistent=False)
        # Start from random codebook entries, as VQGAN+CLIP does.
        codes = torch.randint(0, codebook.shape[0], (rows * cols,), generator=generator)
        start = codebook[codes].T.reshape(1, codebook.shape[1], rows, cols)
        self.latents = torch.nn.Parameter(start.clone())

    def forward(self) -> torch.Tensor:
        decoded = self.vq.decode(self.latents.to(self.vq.dtype)).sample.float()
        return (decoded.clamp(-1, 1) + 1) / 2

    @torch.no_grad()
    def after_step(self) -> None:
        self.latents.copy_(torch.maximum(torch.minimum(self.latents, self.high), self.low))

    @torch.no_grad()
    def set_image(self, pixels: torch.Tensor) -> None:
        self.latents.copy_(self.vq.encode((pixels * 2 - 1).to(self.vq.dtype)).latents.float())


class BigGANGenerator(Generator):
    """BigGAN's noise vector and a soft class vector, as The Big Sleep optimized them."""

    kind, default_lr, can_start_from_image = "biggan", 0.07, False

    def __init__(self, biggan, height: int, width: int, generator: torch.Generator, truncation: float = 1.0):
        super().__init__()
        object.__setattr__(self, "biggan", biggan)
        config = biggan.config
        self.height, self.width, self.truncation = height, width, truncation
        noise = torch.randn((1, config.z_dim), generator=generator).clamp(-2, 2) * truncation
        self.noise = torch.nn.Parameter(noise)
        # Classes start almost off (sigmoid(-3.9) ~ 0.02), each with a little random lean.
        self.classes = torch.nn.Parameter(-3.9 + 0.3 * torch.randn((1, config.num_classes), generator=generator))

    def forward(self) -> torch.Tensor:
        picture = self.biggan(self.noise, torch.sigmoid(self.classes), self.truncation).float()
        picture = (picture.clamp(-1, 1) + 1) / 2
        if picture.shape[-2:] != (self.height, self.width):
            picture = F.interpolate(picture, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return picture


class GANGenerator(Generator):
    """A trained reverie GAN's z and, for a class-conditional one, soft class weights (The Big
    Sleep's recipe on our own GAN). The picture is drawn at the GAN's size and resized to the dream's."""

    kind, default_lr, can_start_from_image = "gan", 0.05, False

    def __init__(self, gan, height: int, width: int, generator: torch.Generator, truncation: float = 1.0):
        super().__init__()
        object.__setattr__(self, "gan", gan)
        self.height, self.width, self.truncation = height, width, truncation
        self.noise = torch.nn.Parameter(torch.randn((1, gan.z_dim), generator=generator))
        if gan.classes:  # logits of a softmax over the classes, starting near uniform
            self.classes = torch.nn.Parameter(0.1 * torch.randn((1, len(gan.classes)), generator=generator))

    def forward(self) -> torch.Tensor:
        device = self.gan.w_mean.device
        weights = torch.softmax(self.classes, dim=1).to(device) if self.gan.classes else None
        picture = self.gan(self.noise.to(device), weights, self.truncation).float()
        picture = (picture.clamp(-1, 1) + 1) / 2
        if picture.shape[-2:] != (self.height, self.width):
            picture = F.interpolate(picture, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return picture
