"""Load single-file Stable Diffusion checkpoints (CompVis / A1111 layout), offline and safely.

Safety: a `.ckpt` is a Python pickle, and unpickling can run arbitrary code. reverie
reads such files only with `torch.load(weights_only=True)`, which accepts plain tensors
and containers and refuses everything else (a few training-state classes are mapped to
an inert stand-in, see `_Inert`); diffusers is then handed the resulting dict of
tensors, never the file, so it cannot unpickle anything itself.

Offline: the diffusers configs for each family ship in `reverie/models/configs/` and
the CLIP tokenizer is built from the open_clip wheel, so nothing is fetched.

Which family, which config:

* SD 1.x  — Hugging Face CLIP text encoder keys (`cond_stage_model.transformer.text_model.*`);
* SD 2.x  — OpenCLIP text encoder keys (`cond_stage_model.model.*`);
* inpainting — either family with 9 UNet input channels (latents + mask + masked image);
* SDXL base and refiner — `conditioner.embedders.*` keys, loaded by models/sdxl.py.

SD 2.x comes as a 768 px v-prediction model (2.0/2.1, the flagship releases and the
base of most fine-tunes) and a 512 px epsilon model ("base"); the weights have the same
shapes, so the choice is made from, in order: the `prediction_type` argument; a
`v_pred` marker key in the file (written by reverie's exporter and ComfyUI); the file's
ModelSpec metadata (`modelspec.prediction_type`, written by reverie and kohya's
sd-scripts); an A1111-style `<name>.yaml` beside the file (`parameterization: "v"`);
the file name ("512" or "base" means epsilon, "768" means v-prediction); else 768
v-prediction. SD 2.x inpainting is
always the 512 epsilon model. The shipped SD 2.x 768 config sets `upcast_attention`,
which 2.1 needs in float16 and which costs nothing in float32.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from reverie.errors import BadCheckpoint, BadRequest, ModelNotFound
from reverie.models.checkpoint_header import (
    CLIP_PREFIX,
    CONFIGS_DIR,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    prediction_type_of,
    read_header,
    shipped_config_name,
)
from reverie.models.clip_tokenizer import EOS_TOKEN, clip_tokenizer
from reverie.models.components import ModelComponents
from reverie.models.safetensors_stream import narrowed, read_narrowed

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}

_UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_CLIP_TOKENS = CLIP_PREFIX + "embeddings.token_embedding.weight"
_OPEN_CLIP_TOKENS = OPEN_CLIP_PREFIX + "token_embedding.weight"
_VAE_PROBE = VAE_PREFIX + "decoder.conv_out.weight"
_CROSS_ATTENTION_KEY = re.compile(re.escape(UNET_PREFIX) + r".*\.attn2\.to_k\.weight$")
_PAD_TOKENS = {"sd1": EOS_TOKEN, "sd2": "!"}  # SD 2.x's OpenCLIP pads with "!" (id 0)
_CONFIG_FILES = ("scheduler/scheduler_config.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")


@dataclass(frozen=True)
class CheckpointLayout:
    """What a checkpoint's keys and shapes say it is."""

    family: str  # "sd1" or "sd2"
    in_channels: int  # 4, or 9 for inpainting
    text_width: int
    cross_attention_dim: int

    @property
    def inpainting(self) -> bool:
        return self.in_channels == 9


# ----------------------------------------------------------------------------- reading


def _first_sentence(error: BaseException) -> str:
    """The gist of a library error: its first sentence, without advice meant for other cases."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")


def _looks_like_safetensors(path: Path) -> bool:
    """True when the file starts with a safetensors header, whatever its name."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + header_len <= path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise BadCheckpoint(f"{path.name} is damaged or not a safetensors file ({e})") from None


def _refused_pickle(path: Path, error: pickle.UnpicklingError) -> BadCheckpoint:
    """The error for a pickle that safe loading would not accept."""
    convert = "convert it to .safetensors with a tool you trust, then load that file"
    found = re.search(r"GLOBAL (\S+)", str(error))
    if found:
        return BadCheckpoint(
            f"{path.name} holds Python objects ({found.group(1)}) besides tensors; unpickling them "
            f"could run code, and reverie refuses to run code from a checkpoint; {convert}"
        )
    return BadCheckpoint(
        f"{path.name} could not be read as plain tensors: it is damaged, or its pickle needs "
        f"features that could run code, and reverie refuses to run code from a checkpoint; {convert}"
    )


class _Inert:
    """Stands in for training-time objects that old checkpoints pickle beside the weights.

    Lightning callbacks and numpy scalars (e.g. `global_step`) are common in A1111-era
    .ckpt files. Under weights_only they are refused; mapping their names to this class
    lets such files load without importing, constructing or running the originals.
    reverie keeps only tensors, so these objects are dropped anyway.
    """

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


_TRAINING_STATE_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "numpy.core.multiarray.scalar",  # numpy 1.x
    "numpy._core.multiarray.scalar",  # numpy 2.x
    "numpy.dtype",
    "_codecs.encode",  # how protocol-2 pickles spell the bytes of a numpy scalar
)


def _read_torch(path: Path) -> dict:
    stand_ins = [(_Inert, name) for name in _TRAINING_STATE_GLOBALS]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(stand_ins):
            # torch warns about pickle protocols it parses fine; the user can do nothing about it.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise _refused_pickle(path, e) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise BadCheckpoint(f"{path.name} is damaged or truncated ({_first_sentence(e)})") from None


def _tensors_only(loaded, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap A1111/Lightning nesting (`state_dict`) and keep the named tensors."""
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise BadCheckpoint(f"{path.name} holds a {type(loaded).__name__}, not a dict of weights")
    tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise BadCheckpoint(f"{path.name} holds no weights")
    return tensors


def read_state_dict(path: str | Path, dtype: torch.dtype | None = None,
                    wanted: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without ever executing code from it.

    `.safetensors` (recognized by content, whatever the name) is read with safetensors;
    `.ckpt/.pt/.pth/.bin` only with `torch.load(weights_only=True)`. A file whose pickle
    holds anything but tensors and plain containers is refused with BadCheckpoint. With
    `dtype`, wider floating-point tensors come narrowed to it; for a 16-bit `dtype` a
    .safetensors file is read tensor by tensor, narrowing each as it comes
    (models/safetensors_stream.py): a 16-bit model from an fp32 file without the fp32 file in
    memory (SD 1.5 in bf16: peak 3.3 GiB instead of 6.8, benchmarks/load_memory.py); there,
    `wanted` may pick the tensors read, the others coming on the meta device (read_narrowed).
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"no checkpoint at {path}")
    if not path.is_file():
        raise ModelNotFound(f"{path} is not a file; a single-file checkpoint is one .safetensors or .ckpt file")
    suffix = path.suffix.lower()
    is_safetensors = suffix == SAFETENSORS_SUFFIX or _looks_like_safetensors(path)
    if is_safetensors and dtype is not None and dtype.itemsize < 4:
        return _tensors_only(read_narrowed(path, dtype, wanted), path)  # narrowed as read
    if is_safetensors:  # fp32 stays mapped: its tensors are the file's pages, read as first used
        loaded = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        loaded = _read_torch(path)
    else:
        raise BadCheckpoint(f"{path.name}: unsupported file type {suffix or '(none)'}; expected .safetensors or .ckpt")
    state = _tensors_only(loaded, path)
    return state if dtype is None else {key: narrowed(tensor, dtype) for key, tensor in state.items()}


# ----------------------------------------------------------------------------- detection


def _describe_unknown(state: dict[str, torch.Tensor]) -> str:
    """Name what a checkpoint that is not SD 1.x/2.x seems to be, for the error message."""
    keys = list(state)

    def any_key(test) -> bool:
        return any(test(k) for k in keys)

    if any_key(lambda k: k.startswith("conditioner.embedders.")):
        return ("an SGM-style checkpoint (conditioner.embedders.*) whose text encoders are neither SDXL base's "
                "(CLIP ViT-L + OpenCLIP bigG) nor its refiner's (bigG alone)")
    if any_key(lambda k: k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k):
        return ("a LoRA (lora_* keys), not a full model; put it in models/Lora/ and use it in the prompt "
                "as <lora:NAME:1> (NAME: its file name without .safetensors)")
    if any_key(lambda k: "double_blocks." in k or "joint_blocks." in k):
        return "a transformer (Flux/SD3-style) checkpoint, not a Stable Diffusion 1.x/2.x UNet"
    if any_key(lambda k: k.startswith("down_blocks.")):
        return "a diffusers-format component (down_blocks.* keys); load the diffusers model folder instead"
    if any_key(lambda k: k.startswith(("encoder.down.", "decoder.up."))):
        return "a standalone VAE, not a full model"
    if any_key(lambda k: k.startswith(UNET_PREFIX)):
        return "a UNet without a recognizable SD 1.x (CLIP) or SD 2.x (OpenCLIP) text encoder"
    sample = ", ".join(keys[:3])
    return f"{len(keys)} tensors in no known Stable Diffusion layout (e.g. {sample})"


def _cross_attention_dim(state: dict[str, torch.Tensor]) -> int | None:
    for key, value in state.items():
        if _CROSS_ATTENTION_KEY.match(key):
            return int(value.shape[1])
    return None


def detect_layout(state: dict[str, torch.Tensor], name: str = "checkpoint") -> CheckpointLayout:
    """Tell SD 1.x from SD 2.x (and inpainting) by keys and shapes; BadCheckpoint otherwise."""
    conv_in = state.get(_UNET_CONV_IN)
    if _CLIP_TOKENS in state:
        family, text_width = "sd1", int(state[_CLIP_TOKENS].shape[1])
    elif _OPEN_CLIP_TOKENS in state:
        family, text_width = "sd2", int(state[_OPEN_CLIP_TOKENS].shape[1])
    else:
        family = None
    if conv_in is None or family is None:
        raise BadCheckpoint(f"{name} is not a Stable Diffusion 1.x/2.x or SDXL checkpoint: found {_describe_unknown(state)}")
    if _VAE_PROBE not in state:
        raise BadCheckpoint(f"{name} has a {family} UNet and text encoder but no VAE (first_stage_model.*)")

    in_channels = int(conv_in.shape[1])
    if in_channels not in (4, 9):
        variant = {8: " (instruct-pix2pix)", 5: " (depth-to-image)"}.get(in_channels, "")
        raise BadCheckpoint(
            f"{name}: UNet with {in_channels} input channels{variant} is not supported; "
            "reverie loads text-to-image (4) and inpainting (9) models"
        )
    cross = _cross_attention_dim(state)
    if cross is None:
        raise BadCheckpoint(f"{name}: the UNet has no cross-attention layers, so it is not Stable Diffusion")
    if cross != text_width:
        raise BadCheckpoint(
            f"{name}: the UNet attends to {cross}-wide text states but the text encoder "
            f"produces {text_width}; the file mixes parts of different models"
        )
    return CheckpointLayout(family, in_channels, text_width, cross)


# ----------------------------------------------------------------------------- configuration


def resolve_prediction_type(
    layout: CheckpointLayout, state: dict, path: Path, requested: str | None, *, has_config_dir: bool = False
) -> str | None:
    """The noise parameterization to use (see the module docstring for the order of evidence;
    checkpoint_header.prediction_type_of weighs it, without torch).

    None means "whatever the config folder's scheduler says" (only with a custom config).
    """
    header = read_header(path) if path.is_file() else None
    return prediction_type_of(layout.family, layout.inpainting, state.keys(), (header or {}).get("__metadata__"), path,
                              requested, has_config_dir=has_config_dir)


def shipped_config_dir(layout: CheckpointLayout, prediction_type: str | None) -> Path:
    """The config folder reverie ships for this layout."""
    return CONFIGS_DIR / shipped_config_name(layout.family, layout.inpainting, prediction_type)


def _check_config_dir(folder: Path) -> None:
    missing = [f for f in _CONFIG_FILES if not (folder / f).is_file()]
    if missing:
        raise BadRequest("config_dir", f"{folder} lacks {', '.join(missing)}")


def _scheduler_config(folder: Path, prediction_type: str | None) -> dict:
    """The folder's scheduler config, completed with diffusers' defaults."""
    import diffusers

    raw = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    cls = getattr(diffusers, raw.get("_class_name", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise BadRequest("config_dir", f"unknown scheduler class {raw.get('_class_name')!r} in {folder}")
    if prediction_type is not None:
        raw["prediction_type"] = prediction_type
    return dict(cls.from_config(raw).config)


# ----------------------------------------------------------------------------- building


def _unfilled_parameters(model) -> list[str]:
    """Parameters still on the meta device: diffusers skips absent keys without a word."""
    return [name for name, p in model.named_parameters() if p.device.type == "meta"]


def _raise_if_missing(missing: list[str], what: str, name: str) -> None:
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BadCheckpoint(f"{name} lacks {what} weights: {', '.join(missing[:3])}{more}")


def _check_conversion(
    model_cls, convert, state: dict, folder: Path, subfolder: str, overrides: dict, what: str, name: str
) -> None:
    """Refuse a file whose weights diffusers' converter cannot fully map onto the config.

    diffusers' from_single_file leaves absent weights on the meta device and then fails
    with an opaque "cannot copy out of meta tensor"; checking on a weightless skeleton
    first lets the error name the mismatched or missing weights.
    """
    from accelerate import init_empty_weights

    config = dict(model_cls.load_config(str(folder), subfolder=subfolder, local_files_only=True))
    config.update(overrides)
    with init_empty_weights():
        expected = model_cls.from_config(config).state_dict()
    converted = convert(checkpoint=state, config=config)
    for key, tensor in expected.items():
        found = converted.get(key)
        if found is not None and tuple(found.shape) != tuple(tensor.shape):
            raise BadCheckpoint(
                f"{name}'s weights do not fit the config in {folder}: {what} weight {key} is "
                f"{tuple(found.shape)} in the file but {tuple(tensor.shape)} in the config"
            )
    _raise_if_missing([k for k in expected if converted.get(k) is None], what, name)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextmanager
def _quiet_dtype_cast_warning():
    """Silence a diffusers 0.42 warning that fires on every `from_single_file(torch_dtype=...)`.

    ModelMixin.to() warns about "modules that should be kept in float32" whenever a
    dtype is given, even when that list is empty (its None check can never fail).
    """
    logger = logging.getLogger("diffusers.models.modeling_utils")
    drop = _DropMessage("should be kept in float32: []")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextmanager
def _as_bad_checkpoint(name: str, family: str, folder: Path):
    """Report diffusers' conversion failures as a BadCheckpoint that says what did not fit."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        yield
    except (ValueError, KeyError, IndexError, RuntimeError, SingleFileComponentError) as e:
        raise BadCheckpoint(
            f"{name} looks like {family} but its weights do not fit the config in {folder}: {_first_sentence(e)}"
        ) from e


def _load_unet(state: dict, folder: Path, in_channels: int, dtype: torch.dtype, name: str):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    # The weights decide the input channels, so one folder serves 4- and 9-channel files.
    overrides = {"in_channels": in_channels}
    _check_conversion(UNet2DConditionModel, convert_ldm_unet_checkpoint, state, folder, "unet", overrides, "UNet", name)
    with _quiet_dtype_cast_warning():
        return UNet2DConditionModel.from_single_file(
            state, config=str(folder), subfolder="unet", local_files_only=True, torch_dtype=dtype, **overrides
        )


def _empty_unet(folder: Path, in_channels: int, dtype: torch.dtype):
    """The UNet `_load_unet` would make, built from its config on the meta device: no weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(folder), subfolder="unet")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config, in_channels=in_channels)
    torch.nn.Module.to(unet, dtype=dtype)  # torch's own cast: diffusers' warns on every dtype cast
    return unet.eval().requires_grad_(False)


def _load_vae(state: dict, folder: Path, dtype: torch.dtype, name: str):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    _check_conversion(AutoencoderKL, convert_ldm_vae_checkpoint, state, folder, "vae", {}, "VAE", name)
    with _quiet_dtype_cast_warning():
        return AutoencoderKL.from_single_file(
            state, config=str(folder), subfolder="vae", local_files_only=True, torch_dtype=dtype
        )


def _load_text_encoder(state: dict, folder: Path, dtype: torch.dtype, name: str):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    # transformers models have no from_single_file; this is the converter diffusers' own
    # pipeline loader uses for a single file's text encoder (CLIP or OpenCLIP keys).
    text_encoder = create_diffusers_clip_model_from_ldm(
        CLIPTextModel, state, config=str(folder), subfolder="text_encoder", local_files_only=True
    )
    # Cast only after the check: casting a weight left on the meta device fails opaquely.
    _raise_if_missing(_unfilled_parameters(text_encoder), "text encoder", name)
    return text_encoder.to(dtype)


def load_single_file(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    prediction_type: str | None = None,
    config_dir: str | Path | None = None,
    leave_unet: Callable[[torch.nn.Module, str], bool] | None = None,
) -> ModelComponents:
    """Load an SD 1.x/2.x or SDXL single-file checkpoint (.safetensors or .ckpt) into ModelComponents.

    `prediction_type` ("epsilon", "v_prediction") overrides the detected noise
    parameterization. `config_dir` replaces the shipped diffusers config folder (it
    needs scheduler/, unet/, vae/ and text_encoder/ configs of the same layout; SDXL also
    text_encoder_2/). `leave_unet`, asked with the UNet (SD 1.x/2.x or SDXL) built from its config
    on the meta device in `dtype` and the file's path, may answer True to leave it there, its weights
    unread (its OpenVINO export will serve: methods/diffusion/run.py).
    Raises ModelNotFound for a missing path and BadCheckpoint for a damaged, unsafe or
    unrecognized file; never fetches anything and never runs code from the file.
    """
    path = Path(path)
    # Straight into the model's dtype, no full-precision copy; the UNet's tensors come unread
    # (their shapes only) when it may be left so.
    not_unet = (lambda key: not key.startswith(UNET_PREFIX)) if leave_unet is not None else None
    state = read_state_dict(path, dtype, not_unet)
    from reverie.models.sdxl import load_sdxl_single_file, sdxl_family

    def with_unet(state: dict) -> dict:  # the tensors left unread, read after all
        unread = {key for key, tensor in state.items() if tensor.is_meta}
        if unread:
            state.update((key, tensor) for key, tensor in read_state_dict(path, dtype, unread.__contains__).items()
                         if key in unread)
        return state

    family = sdxl_family(state)
    if family is not None:
        return load_sdxl_single_file(path, state, family, dtype=dtype, prediction_type=prediction_type,
                                     config_dir=config_dir, leave_unet=leave_unet, with_unet=with_unet)
    layout = detect_layout(state, path.name)
    prediction = resolve_prediction_type(layout, state, path, prediction_type, has_config_dir=config_dir is not None)
    folder = Path(config_dir) if config_dir is not None else shipped_config_dir(layout, prediction)
    _check_config_dir(folder)

    scheduler_config = _scheduler_config(folder, prediction)
    with _as_bad_checkpoint(path.name, layout.family, folder):
        unet = _empty_unet(folder, layout.in_channels, dtype) if leave_unet is not None else None
        if unet is None or not leave_unet(unet, str(path)):
            unet = _load_unet(with_unet(state), folder, layout.in_channels, dtype, path.name)
        vae = _load_vae(state, folder, dtype, path.name)
        text_encoder = _load_text_encoder(state, folder, dtype, path.name)
    return ModelComponents(
        name=path.stem,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(pad_token=_PAD_TOKENS[layout.family]),
        scheduler_config=scheduler_config,
        source=str(path),
        family=layout.family,
        config_name=folder.name,
    )
