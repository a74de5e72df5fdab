"""Which of OpenAI's CLIP models a plain state dict holds, read from its tensor shapes.

OpenAI's CLIP layout (also open_clip's `CLIP`) fixes every hyperparameter in some tensor's
shape: the vision tower's width in its first convolution, its depth in the number of residual
blocks, a ViT's patch size in the kernel of that convolution, the picture size in the length of
its positional embedding (one token per patch plus the class token; for the ResNets, one per
32-pixel cell of attention pooling plus the mean), and the text side's width, depth, context
length, vocabulary and embedding size likewise. Those shapes are compared with open_clip's
configs of the nine models OpenAI released.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# OpenAI's released models, as open_clip names them with the activation they were trained with.
OPENAI_ARCHITECTURES = (
    "RN50-quickgelu", "RN101-quickgelu", "RN50x4-quickgelu", "RN50x16-quickgelu", "RN50x64-quickgelu",
    "ViT-B-32-quickgelu", "ViT-B-16-quickgelu", "ViT-L-14-quickgelu", "ViT-L-14-336-quickgelu",
)
# Keys every OpenAI-layout state dict has, whichever vision tower it carries.
COMMON_KEYS = ("positional_embedding", "token_embedding.weight", "ln_final.weight", "text_projection",
               "visual.conv1.weight")
VIT_KEY = "visual.positional_embedding"
RESNET_KEY = "visual.attnpool.positional_embedding"
RESNET_STRIDE = 32  # a ResNet's attention pooling sees one token per 32x32 pixels


@dataclass(frozen=True)
class ClipShapes:
    """The hyperparameters of a CLIP in OpenAI's layout (`vision_layers` is a tuple for a ResNet)."""

    vision_layers: int | tuple[int, ...]
    vision_width: int
    patch_size: int | None
    image_size: int
    embed_dim: int
    text_width: int
    text_layers: int
    context_length: int
    vocab_size: int

    def describe(self) -> str:
        if self.patch_size is None:
            vision = f"ResNet with blocks {'-'.join(map(str, self.vision_layers))}, width {self.vision_width}"
        else:
            vision = f"ViT with {self.vision_layers} layers of width {self.vision_width}, {self.patch_size} px patches"
        return (f"{vision}, {self.image_size} px pictures; text: {self.text_layers} layers of width "
                f"{self.text_width}, {self.context_length} tokens; {self.embed_dim}-d embeddings")


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks sit under `prefix` (`visual.layer1.` -> 0, 1, 2 -> 3)."""
    return len({key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)})


def _grid_side(positional_embedding: torch.Tensor) -> int:
    """Side of the square grid of tokens, not counting the one extra (class or mean) token."""
    return math.isqrt(positional_embedding.shape[0] - 1)


def shapes_of_state_dict(state: dict[str, torch.Tensor]) -> ClipShapes | None:
    """The hyperparameters a state dict in OpenAI's layout was built with; None for any other layout."""
    if not all(key in state for key in COMMON_KEYS):
        return None
    try:
        return _read_shapes(state)
    except (KeyError, IndexError):  # a tensor missing or of the wrong rank: not this layout after all
        return None


def _read_shapes(state: dict[str, torch.Tensor]) -> ClipShapes | None:
    """As OpenAI's own code reads them when it builds a CLIP from a state dict."""
    conv1 = state["visual.conv1.weight"]
    if VIT_KEY in state:
        layers = _count_blocks(state, "visual.transformer.resblocks.")
        width, patch = conv1.shape[0], conv1.shape[-1]
        image_size = patch * _grid_side(state[VIT_KEY])
    elif RESNET_KEY in state:
        layers = tuple(_count_blocks(state, f"visual.layer{stage}.") for stage in (1, 2, 3, 4))
        width, patch = state["visual.layer1.0.conv1.weight"].shape[0], None
        image_size = RESNET_STRIDE * _grid_side(state[RESNET_KEY])
    else:
        return None
    return ClipShapes(
        vision_layers=layers, vision_width=int(width), patch_size=None if patch is None else int(patch),
        image_size=int(image_size), embed_dim=int(state["text_projection"].shape[1]),
        text_width=int(state["ln_final.weight"].shape[0]), text_layers=_count_blocks(state, "transformer.resblocks."),
        context_length=int(state["positional_embedding"].shape[0]),
        vocab_size=int(state["token_embedding.weight"].shape[0]),
    )


def shapes_of_config(config: dict) -> ClipShapes:
    """The same hyperparameters from an open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`)."""
    vision, text = config["vision_cfg"], config["text_cfg"]
    layers = vision["layers"]
    return ClipShapes(
        vision_layers=tuple(layers) if isinstance(layers, (list, tuple)) else int(layers),
        vision_width=vision["width"], patch_size=vision.get("patch_size"), image_size=vision["image_size"],
        embed_dim=config["embed_dim"], text_width=text["width"], text_layers=text["layers"],
        context_length=text["context_length"], vocab_size=text["vocab_size"],
    )


def openai_architecture(shapes: ClipShapes) -> str | None:
    """The open_clip name of the OpenAI model with these shapes (`ViT-B-32-quickgelu`), or None."""
    import open_clip

    for name in OPENAI_ARCHITECTURES:
        if shapes_of_config(open_clip.get_model_config(name)) == shapes:
            return name
    return None
