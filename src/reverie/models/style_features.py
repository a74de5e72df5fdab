"""Feature networks for neural style transfer: frozen convolutional networks whose activations
describe a picture's content (one deep layer) and its style (Gram matrices of several layers).

A reference names one:
- `builtin`: the default, the network measured best for this project (docs/style-transfer.md);
- `random`: random multi-scale features, seeded once and shipped in builtin/style/ (shallow
  random networks describe textures well: Ustyuzhaninov et al., 2017), so they never change;
- `clip`: the built-in small CLIP's dreaming guide, its convolutional blocks;
- `vgg16:FILE` / `vgg19:FILE`: torchvision's VGG weights from the user's disk (.pth read with
  `torch.load(weights_only=True)`, or .safetensors), keys exactly `features.N.weight/bias`.

Every network takes pixels in [0, 1] and normalises them as it was trained (ImageNet statistics
for VGG). `features(pixels)` gives the activations at the style layers and the content layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadCheckpoint, ModelNotFound
from .style_feature_names import VGG_LAYERS, parse_features

STYLE_DIR = Path(__file__).resolve().parent.parent / "builtin" / "style"
RANDOM_WEIGHTS = "random_features.safetensors"
RANDOM_SEED = 1717  # the seed the shipped random features were drawn with (`make_random_features`)
RANDOM_WIDTHS = (32, 64, 128, 256)  # channels per scale; each scale's bank mixes dilations 1, 2 and 4
CLIP_REFLECT = 8  # pixels mirrored around a picture before the small CLIP's zero-padded convolutions
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FeatureNetwork(nn.Module):
    """A frozen network read at some of its layers.

    `body` is a sequence of modules; the outputs of the modules at `style_layers` and at
    `content_layer` are what style transfer compares. Pixels in [0, 1] are normalised by
    `mean`/`std` first, and mirrored `reflect` pixels out on every side: a network that pads
    its convolutions with zeros sees the picture's edge as a strong feature, and a transfer then
    paints a frame along it. With `colour_layer`, the normalised pixels themselves are the first
    style layer (their Gram holds the mean colour and the colour covariance): a network whose
    normalisation layers make it blind to contrast and saturation (GroupNorm) would otherwise
    let a transfer fade to grey.
    """

    def __init__(self, body: nn.Sequential, style_layers: tuple[int, ...], content_layer: int,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name: str = "", reflect: int = 0,
                 colour_layer: bool = False):
        super().__init__()
        self.reflect, self.colour_layer = reflect, colour_layer
        self.body = body[: max(*style_layers, content_layer) + 1]
        self.style_layers, self.content_layer, self.name = tuple(style_layers), content_layer, name
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for module in self.body.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False  # the tapped outputs must stay as they were
        self.requires_grad_(False)
        self.eval()

    def features(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """pixels [N, 3, H, W] in [0, 1] -> ([activations at each style layer], content activations)."""
        x = (pixels - self.mean) / self.std
        if self.reflect and min(x.shape[-2:]) > self.reflect:
            x = F.pad(x, (self.reflect,) * 4, mode="reflect")
        taps = {}
        colours = [x] if self.colour_layer else []
        for index, module in enumerate(self.body):
            x = module(x)
            if index in self.style_layers or index == self.content_layer:
                taps[index] = x
        return colours + [taps[i] for i in self.style_layers], taps[self.content_layer]


def gram(activations: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, C]: channel co-activations averaged over positions (size-independent)."""
    n, c, h, w = activations.shape
    flat = activations.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def grams(network: FeatureNetwork, pixels: torch.Tensor) -> list[torch.Tensor]:
    return [gram(a) for a in network.features(pixels)[0]]


def gram_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ||Ga - Gb|| / ||Gb||: how far style `a` is from style `b` (0: the same)."""
    return torch.stack([(x - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp_min(1e-12)
                        for x, y in zip(a, b)]).mean(0)


# -- the built-in networks -------------------------------------------------------------------------
class MultiScaleBank(nn.Module):
    """A bank of random 3x3 filters at dilations 1, 2 and 4, concatenated: fine and coarse
    texture at one layer, for the cost of 3x3 convolutions."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        third = cout // 3
        self.convs = nn.ModuleList(nn.Conv2d(cin, n, 3, padding=d, dilation=d, padding_mode="replicate")
                                   for n, d in ((cout - 2 * third, 1), (third, 2), (third, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


def random_body(widths: tuple[int, ...] = RANDOM_WIDTHS) -> nn.Sequential:
    """bank, ReLU, 2x average pool, per width: taps at every ReLU (indices 1, 4, 7, 10)."""
    layers, cin = [], 3
    for i, width in enumerate(widths):
        layers += [MultiScaleBank(cin, width), nn.ReLU()]
        if i < len(widths) - 1:
            layers.append(nn.AvgPool2d(2))
        cin = width
    return nn.Sequential(*layers)


RANDOM_STYLE_LAYERS, RANDOM_CONTENT_LAYER = (1, 4, 7, 10), 7


def make_random_features(seed: int = RANDOM_SEED, widths: tuple[int, ...] = RANDOM_WIDTHS) -> nn.Sequential:
    """The random multi-scale body drawn from `seed`: zero-mean filters (they answer to pattern,
    not brightness) scaled to keep activations near unit size from layer to layer."""
    generator = torch.Generator().manual_seed(seed)
    body = random_body(widths)
    with torch.no_grad():
        for conv in body.modules():
            if isinstance(conv, nn.Conv2d):
                weight = torch.randn(conv.weight.shape, generator=generator)
                weight -= weight.mean(dim=(2, 3), keepdim=True)
                fan_in = weight[0].numel()
                conv.weight.copy_(weight * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
    return body


def load_random_features(path: Path | None = None) -> FeatureNetwork:
    from .weights import load_weights

    body = load_weights(random_body(), path or STYLE_DIR / RANDOM_WEIGHTS, "the built-in style features")
    return FeatureNetwork(body, RANDOM_STYLE_LAYERS, RANDOM_CONTENT_LAYER, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "random")


def load_clip_features(weights: str | None = None) -> FeatureNetwork:
    """The small CLIP's image encoder blocks (conv, GroupNorm, SiLU): taps after each block's
    second activation, content after the third block. `weights`: the guide unless named."""
    from .mini_clip import CLIP_DIR, GUIDE_WEIGHTS, ImageEncoder
    from .weights import load_weights

    encoder = load_weights(ImageEncoder(), CLIP_DIR / (weights or GUIDE_WEIGHTS), "the built-in CLIP")
    # features = [block, pool] * 4; the block outputs sit at 0, 2, 4, 6
    return FeatureNetwork(encoder.features, (0, 2, 4, 6), 4, name="clip", reflect=CLIP_REFLECT, colour_layer=True)


# -- torchvision's VGG from the user's disk --------------------------------------------------------
def vgg_body(arch: str) -> nn.Sequential:
    """torchvision's `arch(weights=None).features`, built without the classifier (120M parameters
    that style transfer never uses and that take seconds to initialise)."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs[{"vgg16": "D", "vgg19": "E"}[arch]])


def check_vgg_layout(state: dict[str, torch.Tensor], arch: str, body: nn.Sequential, name: str) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG state dict, checked key by key and shape by
    shape; classifier keys are ignored. Anything else is refused naming what was found."""
    expected = {f"features.{k}": v.shape for k, v in body.state_dict().items()}
    found = {k: v for k, v in state.items() if k.startswith("features.")}
    hint = f"give torchvision's {arch} weights (e.g. {arch}-*.pth) as --features {arch}:FILE"
    if not found:
        sample = ", ".join(sorted(state)[:3])
        raise BadCheckpoint(f"{name} is not a torchvision VGG state dict (no features.N.weight keys; it has {sample}, ...); {hint}")
    missing = sorted(set(expected) - set(found), key=_layer_order)
    extra = sorted(set(found) - set(expected), key=_layer_order)
    if missing or extra:
        other = "vgg19" if arch == "vgg16" else "vgg16"
        what = f"lacks {', '.join(missing[:3])}" if missing else f"has {', '.join(extra[:3])} besides"
        raise BadCheckpoint(f"{name} {what} for {arch}'s features (is it {other}?); {hint}")
    for key, shape in expected.items():
        if found[key].shape != shape:
            raise BadCheckpoint(f"{name}: {key} is {tuple(found[key].shape)}, {arch} has {tuple(shape)}; {hint}")
    return {key.removeprefix("features."): value.float() for key, value in found.items()}


def _layer_order(key: str):
    parts = key.split(".")
    return (int(parts[1]) if parts[1].isdigit() else 0, key)


def load_vgg_features(arch: str, path: str | Path) -> FeatureNetwork:
    """torchvision's `arch` (vgg16 or vgg19) with the weights in `path`, read at the ReLUs Gatys et al. use."""
    from .single_file import read_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"--features {arch}:{path}: no file there; give the path of torchvision's {arch} weights")
    body = vgg_body(arch)
    try:
        state = read_state_dict(path)
    except BadCheckpoint as exc:
        raise BadCheckpoint(f"--features {arch}:{path}: {exc}; give torchvision's {arch} weights (.pth or .safetensors)") from None
    body.load_state_dict(check_vgg_layout(state, arch, body, f"--features {arch}:{path}"))
    layers = VGG_LAYERS[arch]
    return FeatureNetwork(body, layers["style"], layers["content"], IMAGENET_MEAN, IMAGENET_STD, f"{arch}:{path.name}")


def load_features(reference: str) -> FeatureNetwork:
    """The feature network `reference` names (see the module docstring)."""
    kind, path = parse_features(reference)
    if kind == "random":
        return load_random_features()
    if kind == "clip":
        return load_clip_features()
    return load_vgg_features(kind, path)
