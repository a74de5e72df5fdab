"""CLIP models from local files, through open_clip.

Two formats are read, never by running code from the file:
- OpenAI's released files (`ViT-B-32.pt`, `RN50.pt`, ...): TorchScript archives, read with
  `torchscript_archive`; open_clip infers the architecture from the weight shapes.
- open_clip checkpoints (`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`, or a
  training run's `epoch_N.pt`) and plain state dicts: the architecture is an open_clip model name
  given with the path (`ViT-B-32:path`, `ViT-B-32-quickgelu:path`), or read from
  `open_clip_config.json` beside the file, or else inferred from the shapes when the file is
  one of OpenAI's models in OpenAI's layout (`clip_architecture`). Inferred, it is taken as
  OpenAI's, trained with QuickGELU: the weights alone do not say which activation a model was
  trained with, so LAION weights of the same shapes need their name (`ViT-B-32:path`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BadCheckpoint, BadRequest, ModelNotFound
from .clip_architecture import openai_architecture, shapes_of_state_dict
from .single_file import read_state_dict
from .torchscript_archive import is_torchscript_archive, read_torchscript_tensors

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Present in OpenAI's scripted files but not parameters of the model open_clip builds.
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class ClipFile:
    """A loaded CLIP: the open_clip model, its tokenizer and how to prepare images for it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def split_reference(reference: str) -> tuple[str | None, Path]:
    """`ViT-B-32:path` -> ("ViT-B-32", path); a bare path -> (None, path)."""
    import open_clip

    arch, sep, rest = reference.partition(":")
    if sep and arch in open_clip.list_models():
        return arch, Path(rest)
    return None, Path(reference)


def _weights_in(folder: Path) -> Path:
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ModelNotFound(f"{folder} has no CLIP weights ({' or '.join(OPEN_CLIP_WEIGHTS)})")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip training checkpoints save `module.`-prefixed keys from DistributedDataParallel."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _without_openai_extras(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(OPENAI_EXTRAS)}


def _openai_model(state: dict[str, torch.Tensor], name: str) -> torch.nn.Module:
    from open_clip.model import build_model_from_openai_state_dict

    state = _without_openai_extras(state)
    try:
        model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None).float()
        # open_clip builds it in fp16 first; reload so fp32 files keep their full precision.
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)
        return model
    except (RuntimeError, KeyError, IndexError, ValueError) as exc:
        raise BadCheckpoint(f"{name} is not a complete OpenAI CLIP ({str(exc).splitlines()[0]})") from None


class _WithoutRandomInitLine(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... Model initialized randomly." line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init():
    """open_clip says a model it builds without weights is random; reverie loads the weights
    right after, so the line would be wrong. open_clip logs it through the root logger: a filter
    on that one message, unlike a raised level, keeps every other line."""
    quiet = _WithoutRandomInitLine()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _open_clip_model(model_name: str, state: dict, name: str) -> torch.nn.Module:
    import open_clip

    with _quiet_random_init():
        # No tower weights either (a Hugging Face text tower would be fetched): all come from the file.
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False, pretrained_text=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).split("\n\t", 1)[-1].strip().splitlines()[0]
        raise BadCheckpoint(f"{name} does not match open_clip's {model_name}: {detail}") from None
    return model.float()


def load_clip_file(reference: str) -> ClipFile:
    """Load the CLIP at `reference` (a path, `ARCH:path`, or an open_clip folder)."""
    import open_clip

    arch, path = split_reference(reference)
    if not path.exists():
        raise ModelNotFound(f"no CLIP at {path}")
    if path.is_dir():
        path = _weights_in(path)
    if arch is None and (path.parent / OPEN_CLIP_CONFIG).is_file():
        arch = f"local-dir:{path.parent}"  # open_clip reads the architecture from the folder's config

    if is_torchscript_archive(path):
        # OpenAI released its models as TorchScript archives, trained with QuickGELU.
        model = _openai_model(_strip_prefix(read_torchscript_tensors(path)), path.name)
        tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
        return ClipFile(path.stem, model.eval().requires_grad_(False), tokenizer,
                        _image_size(model), OPENAI_MEAN, OPENAI_STD)
    state = _strip_prefix(read_state_dict(path))
    if arch is None:
        arch = _inferred_architecture(state, path)
        state = _without_openai_extras(state)
    try:
        model = _open_clip_model(arch, state, path.name)
        tokenizer = open_clip.get_tokenizer(arch)
    except (ValueError, RuntimeError, OSError) as exc:
        raise BadCheckpoint(f"{path.name}: open_clip could not build {arch} ({str(exc).splitlines()[0]})") from None
    preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
    return ClipFile(f"{arch}:{path.stem}", model.eval().requires_grad_(False), tokenizer, _image_size(model),
                    tuple(preprocess.get("mean", OPENAI_MEAN)), tuple(preprocess.get("std", OPENAI_STD)))


def _inferred_architecture(state: dict[str, torch.Tensor], path: Path) -> str:
    """The OpenAI model a plain state dict holds (`ViT-B-32-quickgelu`), from its shapes."""
    shapes = shapes_of_state_dict(state)
    name_it = (f"say which open_clip architecture it is in front of the path, e.g. ViT-B-32:{path} (LAION) "
               f"or ViT-B-32-quickgelu:{path} (OpenAI), or put its {OPEN_CLIP_CONFIG} beside it")
    if shapes is None:
        raise BadRequest("clip", f"{path.name} is a plain weights file not in OpenAI CLIP's layout; {name_it}")
    arch = openai_architecture(shapes)
    if arch is None:
        raise BadRequest("clip", f"{path.name} has OpenAI CLIP's layout but none of OpenAI's models' shapes "
                                 f"({shapes.describe()}); {name_it}")
    return arch


def _image_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
