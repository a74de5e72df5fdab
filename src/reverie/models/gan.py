"""reverie's own GAN generator: the network, and its folder format (how a reference finds
one is `models/gan_folders.py`, which needs no torch).

A StyleGAN-lite generator: z (Gaussian) -> a small mapping MLP -> w; a learned 4x4 start is
doubled in size block by block (nearest-neighbour upsampling, two 3x3 convolutions), each
convolution's output instance-normalised and then scaled and shifted per channel from w (AdaIN,
as StyleGAN v1 styled its layers); a 1x1 convolution draws RGB in [-1, 1]. A class-conditional
generator (e.g. one class per art source: noto, twemoji, fluent, tabler) feeds a learned class
vector into the mapping beside z. Every operation works per picture, so a picture does not
depend on the others in its batch.

Truncation pulls w toward the mean w of its class (`w_mean`, computed from the final weights
when a run is exported): 0 gives the mean picture, 1 the full spread.

A trained GAN is a folder (`reverie train gan` writes RUN/export):

    config.json              {"kind": "gan", "_class_name": "ReverieGANGenerator", size, widths, ...}
    generator.safetensors    the EMA generator's weights (fp16) and its w_mean

Loading reads safetensors only and fills the network strictly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BadCheckpoint, ModelNotFound
from .gan_folders import CLASS_NAME, CONFIG_NAME, KIND, WEIGHTS_NAME, gan_folder, read_config
from .weights import fill_exactly

START = 4  # side of the learned start block
CONFIG_KEYS = ("size", "z_dim", "w_dim", "mapping_layers", "widths", "classes")


def widths_for(size: int, base: int = 256, least: int = 32) -> list[int]:
    """Channels of each block from 4 px up to `size`: `base`, halved every block from 16 px on, at least `least`."""
    levels = int(math.log2(size // START)) + 1
    return [max(least, base >> max(0, level - 1)) for level in range(levels)]


def check_size(size: int) -> None:
    """A GAN draws square pictures whose side is a power of two from 16 to 256 px."""
    if size not in (16, 32, 64, 128, 256):
        raise ValueError(f"size must be 16, 32, 64, 128 or 256 px, not {size}")


class StyledConv(nn.Module):
    """3x3 convolution, leaky ReLU, instance norm, then a per-channel scale and shift from w."""

    def __init__(self, cin: int, cout: int, w_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.style = nn.Linear(w_dim, 2 * cout)
        # Centred on plain instance norm (scale 1, shift 0), with w's pull on from the start (each
        # scale varying by about 0.5 from picture to picture): with styles that barely depend on
        # w, the generator learned one picture per class and ignored z.
        nn.init.normal_(self.style.weight, std=0.5 / w_dim**0.5)
        nn.init.zeros_(self.style.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.instance_norm(F.leaky_relu(self.conv(x), 0.2))
        scale, shift = self.style(w)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class GANGenerator(nn.Module):
    """(z [N, z_dim], class indices [N] or class weights [N, C] or None) -> pictures [N, 3, size, size] in [-1, 1]."""

    def __init__(self, size: int = 64, z_dim: int = 128, w_dim: int = 128, mapping_layers: int = 2,
                 widths: list[int] | tuple[int, ...] | None = None, classes: list[str] | tuple[str, ...] = ()):
        super().__init__()
        check_size(size)
        widths = list(widths or widths_for(size))
        if len(widths) != int(math.log2(size // START)) + 1:
            raise ValueError(f"a {size} px generator needs {int(math.log2(size // START)) + 1} widths, not {len(widths)}")
        self.config = {"size": size, "z_dim": z_dim, "w_dim": w_dim, "mapping_layers": mapping_layers,
                       "widths": widths, "classes": list(classes)}
        self.classes = list(classes)
        self.class_embedding = nn.Embedding(len(classes), z_dim) if classes else None
        layers, width = [], 2 * z_dim if classes else z_dim
        for _ in range(mapping_layers):
            layer = nn.Linear(width, w_dim)
            nn.init.kaiming_normal_(layer.weight, a=0.2)  # w keeps z's scale (PyTorch's default shrinks it 3x a layer)
            nn.init.zeros_(layer.bias)
            layers += [layer, nn.LeakyReLU(0.2)]
            width = w_dim
        self.mapping = nn.Sequential(*layers)
        self.w_dim = width
        self.start = nn.Parameter(torch.randn(1, widths[0], START, START))
        self.convs = nn.ModuleList([StyledConv(widths[0], widths[0], width)])
        for cin, cout in zip(widths, widths[1:]):
            self.convs += [StyledConv(cin, cout, width), StyledConv(cout, cout, width)]
        self.to_rgb = nn.Conv2d(widths[-1], 3, 1)
        # The mean w of each class (one row for an unconditional GAN); filled at export.
        self.register_buffer("w_mean", torch.zeros(max(1, len(classes)), width))

    @property
    def size(self) -> int:
        return self.config["size"]

    @property
    def z_dim(self) -> int:
        return self.config["z_dim"]

    def class_weights(self, labels: torch.Tensor | None, count: int) -> torch.Tensor | None:
        """Class indices [N] (or ready weights [N, C]) as weights over the classes; None when unconditional."""
        if self.class_embedding is None:
            return None
        if labels is None:
            raise ValueError("this GAN is class-conditional: give a class")
        if labels.dim() == 1:
            return F.one_hot(labels.long(), len(self.classes)).float()
        return labels.float().expand(count, -1)

    def map(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z -> w (z normalised to the unit sphere times sqrt(dim), as StyleGAN's pixel norm)."""
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        weights = self.class_weights(labels, len(z))
        if weights is not None:
            embedded = weights @ self.class_embedding.weight
            embedded = embedded * torch.rsqrt(embedded.pow(2).mean(dim=1, keepdim=True) + 1e-8)
            z = torch.cat([z, embedded], dim=1)
        return self.mapping(z)

    def mean_w(self, labels: torch.Tensor | None, count: int) -> torch.Tensor:
        weights = self.class_weights(labels, count)
        if weights is None:
            return self.w_mean[:1].expand(count, -1)
        return weights @ self.w_mean

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        x = self.start.expand(len(w), -1, -1, -1)
        x = self.convs[0](x, w)
        for i in range(1, len(self.convs), 2):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.convs[i + 1](self.convs[i](x, w), w)
        return torch.tanh(self.to_rgb(x))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        w = self.map(z, labels)
        if truncation != 1.0:
            mean = self.mean_w(labels, len(z))
            w = mean + truncation * (w - mean)
        return self.synthesize(w)

    @torch.no_grad()
    def compute_w_mean(self, samples: int = 4096, seed: int = 0) -> None:
        """Fill `w_mean` with the mean w of each class over `samples` fixed-seed z."""
        rng = torch.Generator().manual_seed(seed)
        z = torch.randn(samples, self.z_dim, generator=rng).to(self.w_mean.device)
        rows = range(len(self.classes)) if self.classes else [None]
        for row, label in enumerate(rows):
            labels = None if label is None else torch.full((samples,), label, device=z.device)
            self.w_mean[row] = self.map(z, labels).mean(dim=0)


def save_gan(generator: GANGenerator, folder: str | Path, half: bool = True, extra: dict | None = None) -> Path:
    """Write the generator as a GAN folder (fp16 weights unless `half` is False); `extra` goes into config.json."""
    from safetensors.torch import save_file

    from ..outputs.files import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().cpu().to(dtype).contiguous() for k, v in generator.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda partial: save_file(tensors, str(partial)))
    config = {"kind": KIND, "_class_name": CLASS_NAME, **generator.config, **(extra or {})}
    atomic_write(folder / CONFIG_NAME, lambda partial: partial.write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def load_gan(folder: str | Path, dtype: torch.dtype = torch.float32) -> GANGenerator:
    """The GAN in `folder` (a GAN folder, or a training run folder with export/), frozen, in eval mode.

    Raises ModelNotFound when `folder` holds no GAN and BadCheckpoint when its files are damaged
    or do not match; both messages name the file.
    """
    from safetensors.torch import load_file

    folder = gan_folder(Path(folder))
    config = read_config(folder)
    if config is None:
        raise ModelNotFound(f"{folder} is not a GAN folder: expected {CONFIG_NAME} with \"kind\": \"gan\" and "
                            f"{WEIGHTS_NAME} (train one with `reverie train gan`)")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelNotFound(f"{folder} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    try:
        generator = GANGenerator(**{key: config[key] for key in CONFIG_KEYS if key in config})
    except (TypeError, ValueError, KeyError) as exc:
        raise BadCheckpoint(f"{folder / CONFIG_NAME} is not a valid GAN config ({exc})") from None
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise BadCheckpoint(f"{weights} is damaged ({str(exc).splitlines()[0]})") from None
    fill_exactly(generator, {k: v.float() for k, v in state.items()}, f"{weights.name} does not match {CONFIG_NAME}")
    if dtype != torch.float32:
        generator = generator.to(dtype)
    return generator.eval().requires_grad_(False)
