"""Loading a model saved in the diffusers folder layout (model_index.json + one folder a part)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import BadCheckpoint, ModelNotFound
from .components import ModelComponents, distilled_defaults

REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def load_diffusers_folder(path: str | Path, dtype: torch.dtype | None = None,
                          leave_unet: Callable[[object, str], bool] | None = None) -> ModelComponents:
    """Load every part of a local diffusers pipeline folder (fp32 unless `dtype`), never reaching
    for the network. `leave_unet`, asked with the UNet built from its config on the meta device
    in `dtype` and the folder, may answer True to leave it there, its weights unread (its
    OpenVINO export will serve: methods/diffusion/run.py)."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # reverie shows its own progress
    dtype = dtype or torch.float32

    path = Path(path)
    if not path.is_dir():
        raise ModelNotFound(f"no model folder at {path}")
    index = _read_index(path)
    missing = [part for part in REQUIRED_PARTS if part not in index]
    if missing:
        raise BadCheckpoint(f"{path}/model_index.json lacks {', '.join(missing)}: not a Stable Diffusion-style pipeline")
    # A 16-bit request reads each model's weights tensor by tensor (models/safetensors_stream.py)
    # where it can; diffusers loads the rest, and every part when that cannot be done.
    streamed = {}
    if leave_unet is not None and "unet" in index:
        empty = _empty_part(path, "unet", index["unet"])
        if empty is not None:
            torch.nn.Module.to(empty, dtype=dtype)  # torch's own cast: diffusers' warns on every dtype cast
            if leave_unet(empty, str(path)):
                streamed["unet"] = empty.eval().requires_grad_(False)
    for part in MODEL_PARTS if dtype.itemsize < 4 else ():
        model = _streamed_part(path, part, index[part], dtype) if part in index and part not in streamed else None
        if model is not None:
            streamed[part] = model
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path,
            **streamed,
            dtype=dtype,
            local_files_only=True,
            use_safetensors=None,
            # SD pipelines have a safety checker to leave out; SDXL's have none to name.
            **({} if index.get("_class_name", "").startswith("StableDiffusionXL")
               else {"safety_checker": None, "requires_safety_checker": False}),
        )
    except (OSError, ValueError, EnvironmentError, RuntimeError, KeyError) as exc:
        raise BadCheckpoint(f"could not load the model folder {path}: {_first_line(exc)}") from None
    # SDXL's pipelines add a second text encoder (the refiner has only that one).
    text_encoder_2, tokenizer_2 = getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, text_encoder_2):
        if module is not None:
            module.eval().requires_grad_(False)
    if pipe.text_encoder is None and text_encoder_2 is None:
        raise BadCheckpoint(f"{path}/model_index.json names no text encoder: reverie needs one to read prompts")
    family = index.get("_reverie_family") or _guess_family(pipe)
    return ModelComponents(
        name=path.name,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler_config=dict(pipe.scheduler.config),
        source=str(path),
        family=family,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        sampling=distilled_defaults(pipe.unet.config),
    )


MODEL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def _empty_part(path: Path, part: str, library_and_class):
    """The pipeline part `part` built from its config on the meta device, its weights unread;
    None where the plain path does not fit and diffusers' own loader is to load it: no
    .safetensors weights (`_weights_files`: .bin, variants), a class that keeps modules in fp32,
    a config diffusers reads its own way."""
    import importlib

    from accelerate import init_empty_weights

    if not _weights_files(path, part) or not isinstance(library_and_class, list) or len(library_and_class) != 2 \
            or library_and_class[0] not in ("diffusers", "transformers"):
        return None
    library, class_name = library_and_class
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None or getattr(cls, "_keep_in_fp32_modules", None):
        return None
    try:
        if library == "diffusers":
            config = cls.load_config(path / part)
            with init_empty_weights():
                return cls.from_config(config)
        config = cls.config_class.from_pretrained(path / part)
        with init_empty_weights():
            return cls(config)
    except (ValueError, OSError, TypeError):
        return None


def _weights_files(path: Path, part: str) -> list[Path]:
    """The part's .safetensors weights: its one file, or the shards its index names (diffusers
    and transformers shard a part past 10 GB when they save it: SDXL's fp32 UNet); none where
    the part has both, neither, or an index that does not fit (diffusers' loader then says why)."""
    folder, found = path / part, []
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            found.append([folder / name])
        index = folder / (name + ".index.json")
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return []
            if not shards or any(Path(shard).name != shard or not (folder / shard).is_file() for shard in shards):
                return []
            found.append([folder / shard for shard in shards])
    return found[0] if len(found) == 1 else []


def _streamed_part(path: Path, part: str, library_and_class, dtype: torch.dtype):
    """The pipeline part `part` built on the meta device (`_empty_part`) and filled with its
    weights read straight into `dtype` (read_narrowed, shard by shard): no full-precision copy of
    its files is ever resident. None where that plain path does not fit, and diffusers' own
    loader is to load it: where `_empty_part` gives none, or weights whose names or shapes are
    not the model's (older layouts that diffusers converts as it loads)."""
    from .safetensors_stream import read_narrowed

    model = _empty_part(path, part, library_and_class)
    if model is None:
        return None
    try:
        state = {}
        for file in _weights_files(path, part):
            state.update(read_narrowed(file, dtype))
    except BadCheckpoint as exc:
        raise BadCheckpoint(f"could not load the model folder {path}: {part}/{exc}") from None
    except (ValueError, OSError, TypeError):
        return None
    try:
        model.load_state_dict(state, strict=True, assign=True)  # strict: every weight filled, none left on meta
    except RuntimeError:
        return None  # names or shapes diffusers' loader converts as it loads
    if any(t.dtype != dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()):
        model.to(dtype)  # only then: diffusers warns on every cast, even one with nothing to do
    return model.eval()


def _read_index(path: Path) -> dict:
    try:
        return json.loads((path / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadCheckpoint(f"{path}/model_index.json is not valid JSON ({exc})") from None


def _guess_family(pipe) -> str:
    if getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl" if pipe.text_encoder is not None else "sdxl-refiner"
    dim = int(pipe.unet.config.cross_attention_dim)
    return {768: "sd1", 1024: "sd2"}.get(dim, "custom")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
