"""The feature networks style transfer can use, by name: checked without torch (`models/style_features.py`
builds them).

`builtin` (the built-in network), `random`, `clip`, or `vgg16:FILE` / `vgg19:FILE` (torchvision's
VGG weights from the user's disk).
"""

from __future__ import annotations

BUILTIN = "clip"  # what `builtin` means: the winner of benchmarks/style.py (docs/style-transfer.md)
BUILTIN_NAMES = ("builtin", "random", "clip")  # the feature networks that need no file
# torchvision's `features` indices: the ReLUs after conv1_1, 2_1, 3_1, 4_1, 5_1 (style) and conv4_2 (content).
VGG_LAYERS = {
    "vgg16": {"style": (1, 6, 11, 18, 25), "content": 20, "convs": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)},
    "vgg19": {"style": (1, 6, 11, 20, 29), "content": 22,
              "convs": (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)},
}
FEATURES_HELP = "builtin, random, clip, vgg16:FILE or vgg19:FILE (torchvision's VGG weights, .pth or .safetensors)"


def parse_features(reference: str) -> tuple[str, str | None]:
    """`builtin` -> (the built-in's name, None); `vgg19:FILE` -> ("vgg19", FILE); else ValueError."""
    if reference == "builtin":
        return BUILTIN, None
    if reference in BUILTIN_NAMES:
        return reference, None
    arch, sep, path = reference.partition(":")
    if sep and arch in VGG_LAYERS and path:
        return arch, path
    raise ValueError(f"unknown feature network {reference!r}; use {FEATURES_HELP}")
