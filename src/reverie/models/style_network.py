"""Feed-forward style networks (Johnson et al., 2016): one style, any picture, one pass.

The network: a convolution at full size, two strided ones down, residual blocks at a quarter of
the size, two nearest-neighbour upsamplings with convolutions back, one convolution to RGB;
instance norm throughout, reflection padding. It predicts a change to the content picture
(pixels [0, 1] in, pixels out), so it starts near the identity and learns the style on top.

A trained network is a folder with `style_network.safetensors` and `style_network.json` (its
widths, the style it learned, the feature network and size it was trained at): `reverie train
style` exports one into RUN/export. `reverie models` lists them as kind "style": the built-in
ones in builtin/style/networks/, and those found in the models folder (a run folder or its
export); a studio names them only by those names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadCheckpoint, ModelNotFound

NETWORK_WEIGHTS, NETWORK_CONFIG = "style_network.safetensors", "style_network.json"
BUILTIN_NETWORKS = Path(__file__).resolve().parent.parent / "builtin" / "style" / "networks"


@dataclass
class StyleNetworkConfig:
    widths: tuple[int, int, int] = (16, 32, 64)
    residual_blocks: int = 4
    style: str = ""  # the style picture's name
    features: str = "builtin"
    size: int = 128  # the picture size it was trained at
    strength: float = 1.0
    smoothness: float = 0.02  # total-variation weight it was trained with
    steps: int = 0


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, norm: bool = True, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, padding_mode="reflect")]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3), _conv(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a convolution: no checkerboard (Odena et al.)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _conv(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class StyleNetwork(nn.Module):
    """pixels [N, 3, H, W] in [0, 1] -> the styled pictures (any H, W; padded to a multiple of 4 inside)."""

    def __init__(self, config: StyleNetworkConfig | None = None):
        super().__init__()
        self.config = config = config or StyleNetworkConfig()
        a, b, c = config.widths
        self.body = nn.Sequential(
            _conv(3, a, 7), _conv(a, b, 3, 2), _conv(b, c, 3, 2),
            *[Residual(c) for _ in range(config.residual_blocks)],
            Upsample(c, b), Upsample(b, a), _conv(a, 3, 7, norm=False, relu=False),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        pad_h, pad_w = -h % 4, -w % 4
        x = F.pad(pixels, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else pixels
        return (x + self.body(x))[..., :h, :w]


# -- files -------------------------------------------------------------------------------------------
def save_style_network(network: StyleNetwork, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().float().contiguous() for k, v in network.state_dict().items()}, folder / NETWORK_WEIGHTS)
    (folder / NETWORK_CONFIG).write_text(json.dumps(asdict(network.config), indent=1))
    return folder


def network_folder(path: Path) -> Path | None:
    """The folder holding a style network's files: `path` itself, or a run folder's export/."""
    for folder in (path, path / "export"):
        if (folder / NETWORK_WEIGHTS).is_file() and (folder / NETWORK_CONFIG).is_file():
            return folder
    return None


def load_style_network(path: str | Path) -> StyleNetwork:
    """The style network in `path` (a run folder of `reverie train style`, its export/, or a folder
    `reverie models` lists); only safetensors and JSON are read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    folder = network_folder(path) if path.is_dir() else None
    if folder is None:
        raise ModelNotFound(f"--model: {path} holds no style network ({NETWORK_WEIGHTS} and {NETWORK_CONFIG}, or export/ "
                            f"with them); give a `reverie train style` run folder or a name `reverie models` lists as style")
    try:
        fields = json.loads((folder / NETWORK_CONFIG).read_text())
        fields["widths"] = tuple(fields["widths"])
        config = StyleNetworkConfig(**fields)
        network = StyleNetwork(config)
        network.load_state_dict(load_file(folder / NETWORK_WEIGHTS))
    except (ValueError, TypeError, KeyError, RuntimeError, OSError, SafetensorError) as exc:
        raise BadCheckpoint(f"--model: {folder} holds a damaged style network ({str(exc).splitlines()[0][:160]}); "
                            f"train it again with `reverie train style`") from None
    return network.eval().requires_grad_(False)


def style_networks() -> dict[str, Path]:
    """{name: folder} of every style network a studio may name: the built-in ones, then the
    models folder's (a run folder or an export folder inside it)."""
    from .registry import models_dir

    found: dict[str, Path] = {}
    if BUILTIN_NETWORKS.is_dir():
        for child in sorted(BUILTIN_NETWORKS.iterdir()):
            if child.is_dir() and network_folder(child):
                found[child.name] = network_folder(child)
    folder = models_dir()
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            if child.is_dir() and network_folder(child) and child.name not in found:
                found[child.name] = network_folder(child)
    return found


def resolve_style_network(reference: str) -> Path:
    """A listed name, or a folder path, -> the folder of the network's files."""
    listed = style_networks()
    if reference in listed:
        return listed[reference]
    path = Path(reference).expanduser()
    if path.is_dir() and network_folder(path):
        return network_folder(path)
    known = ", ".join(listed) or "none yet: train one with `reverie train style STYLE.png`"
    raise ModelNotFound(f"--model: no style network {reference!r} (not a run folder with export/{NETWORK_WEIGHTS}; "
                        f"style networks here: {known})")


def list_style_networks() -> list:
    """The style networks as `reverie models` lists them (kind "style")."""
    from .registry import ModelEntry

    entries = []
    for name, folder in style_networks().items():
        try:
            config = json.loads((folder / NETWORK_CONFIG).read_text())
            note = f"style network: {config.get('style', '?')}, {config.get('steps', '?')} steps at {config.get('size', '?')} px"
        except (OSError, ValueError):
            note = "style network (its style_network.json is unreadable)"
        location = "built in" if folder.is_relative_to(BUILTIN_NETWORKS) else str(folder)
        entries.append(ModelEntry(name, "style", location, note))
    return entries
