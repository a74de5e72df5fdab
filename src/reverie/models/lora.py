"""LoRA files: finding them by name, what they are for, and applying them to a cached model.

Files live in the models folder: `models/Lora/` and `models/lora/` (A1111's layout), or directly in
`models/` (recognised by their keys); in a studio job, first in its user's own folder of LoRAs
trained there (models/own_loras.py). A LoRA is named by its file's stem, never by a path, so a
studio client can only use the LoRAs the studio lists for them (`GET /api/v1/loras`).

Formats, all loaded by diffusers' own LoRA loader onto PEFT adapters (no converter of ours):
kohya/A1111 (`lora_unet_*`, `lora_te_*` with `alpha`; SDXL's `lora_te1_`/`lora_te2_`), LyCORIS LoCon
(kohya keys on convolutions too), and the diffusers/PEFT layouts (`unet.*.lora_A.weight`, older
`*.lora.down.weight`). LyCORIS LoHa/LoKr (`hada_*`, `lokr_*`) are refused: diffusers does not load
them for Stable Diffusion UNets.

`apply_loras(components, uses)` loads each LoRA once as a named adapter on the cached modules (the
adapter name carries the file's hash, so a changed file is loaded afresh), activates this request's
set with its weights, and disables every adapter on the way out: the cached model is then exactly
the base model again.
"""

from __future__ import annotations

import hashlib
import re
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import BadCheckpoint, BadRequest, ModelNotFound
from .checkpoint_header import read_header
from .components import ModelComponents, unet_parked

LORA_FOLDERS = ("Lora", "lora", "LyCORIS")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
# The text-state width a UNet attends to, for naming what a LoRA is for.
BASE_BY_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl", 384: "mini"}
_TEXT_PARTS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA file: its name (the stem), path, A1111's short hash, the base it is for, its format."""

    name: str
    path: Path
    hash: str  # A1111's "Lora hashes" value: see `a1111_hash`
    base: str  # sd1, sd2, sdxl, mini, or "a model attending to N-wide text states"
    format: str  # kohya, lycoris-locon, lycoris-loha, lycoris-lokr, peft, diffusers
    cross_width: int | None  # the text-state width its UNet layers expect (None: no cross-attention keys)
    text_width: int | None  # the text encoder width its TE layers expect (None: UNet only)
    has_text: bool
    has_unet: bool = True  # layers for the UNet (False: a text-encoder-only LoRA)


# ----------------------------------------------------------------------------- finding


def lora_folders() -> list[Path]:
    """Where LoRAs are found, in order: the user's own folder in a studio job (models/own_loras.py),
    models/Lora/, models/lora/, models/LyCORIS/, then models/ itself."""
    from .own_loras import own_lora_folder
    from .registry import models_dir

    root = models_dir()
    own = own_lora_folder()
    return ([own] if own is not None else []) + [root / name for name in LORA_FOLDERS] + [root]


def list_loras() -> dict[str, Path]:
    """{name: path} of every LoRA in the models folder (the first found wins for a name)."""
    found: dict[str, Path] = {}
    for folder in lora_folders():
        if not folder.is_dir():
            continue
        in_root = folder == lora_folders()[-1]
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in LORA_SUFFIXES and path.stem not in found:
                if not in_root or is_lora_file(path):
                    found[path.stem] = path
    return found


def find_lora(name: str) -> Path:
    """The file of the LoRA called `name`; ModelNotFound listing the known names otherwise."""
    known = list_loras()
    if name in known:
        return known[name]
    listed = ", ".join(sorted(known)) or "none"
    raise ModelNotFound(f"no LoRA named {name!r} in {lora_folders()[0]}/ (known LoRAs: {listed}); "
                        "put the .safetensors file there and write <lora:ITS_FILE_NAME:0.8>")


def is_lora_file(path: Path) -> bool:
    """Whether a file's tensor names are a LoRA's (read from the safetensors header only)."""
    keys = _safetensors_keys(path)
    return keys is not None and _looks_like_lora(keys)


def _looks_like_lora(keys) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k
               or ".lora.down." in k or ".hada_w1_a" in k for k in keys)


def _safetensors_keys(path: Path) -> list[str] | None:
    try:
        header = read_header(path, max_bytes=100_000_000)
    except OSError:
        return None
    return [key for key in header if key != "__metadata__"] if header is not None else None


# ----------------------------------------------------------------------------- describing

_INFO_CACHE: dict[tuple, LoraInfo] = {}


def a1111_hash(path: Path) -> str:
    """The hash A1111 writes in "Lora hashes": for a .safetensors file the sha256 of everything
    after the header (the tensor data; kohya's `addnet_hash_safetensors`), for other files the
    sha256 of the whole file; its first 12 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        if path.suffix.lower() == ".safetensors":
            file.seek(8 + struct.unpack("<Q", file.read(8))[0])
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file, read without executing code (safetensors, or weights_only)."""
    from .single_file import read_state_dict

    state = read_state_dict(path)
    if not _looks_like_lora(state):
        raise BadCheckpoint(f"{path.name} is not a LoRA (no lora_* keys); a LoRA file is what kohya, "
                            "diffusers or PEFT training writes")
    return state


def lora_info(path: Path) -> LoraInfo:
    """What the LoRA at `path` is (cached while the file is unchanged): from a .safetensors
    file's header alone (no torch), from a torch file's tensors otherwise."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _INFO_CACHE:
        _INFO_CACHE[key] = _describe(path, _lora_shapes(path))
    return _INFO_CACHE[key]


def _lora_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in the LoRA file at `path`; BadCheckpoint where it is no LoRA."""
    header = read_header(path, max_bytes=100_000_000) if path.suffix.lower() == ".safetensors" else None
    if header is None:
        return {key: tuple(tensor.shape) for key, tensor in read_lora(path).items()}
    shapes = {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}
    if not _looks_like_lora(shapes):
        raise BadCheckpoint(f"{path.name} is not a LoRA (no lora_* keys); a LoRA file is what kohya, "
                            "diffusers or PEFT training writes")
    return shapes


def _describe(path: Path, shapes: dict[str, tuple[int, ...]]) -> LoraInfo:
    keys = list(shapes)
    if any(".hada_w1_a" in k for k in keys):
        format = "lycoris-loha"
    elif any(".lokr_w1" in k for k in keys):
        format = "lycoris-lokr"
    elif any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in keys):
        convs = any(k.endswith("lora_down.weight") and len(shapes[k]) == 4 for k in keys)
        format = "lycoris-locon" if convs else "kohya"
    elif any(".lora_A." in k for k in keys):
        format = "peft"
    else:
        format = "diffusers"
    cross = text = None
    for k, shape in shapes.items():
        if len(shape) < 2:
            continue
        down = k.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b", "hada_w2_b"))
        if not down:
            continue
        if cross is None and re.search(r"attn2[._]to[._]k[._]", k):
            cross = int(shape[1])
        if text is None and re.search(r"(lora_te1?_|text_encoder\.).*q[._]proj", k):
            text = int(shape[1])
    has_text = any(k.startswith(("lora_te", "text_encoder")) for k in keys)
    has_unet = any(not k.startswith(("lora_te", "text_encoder")) for k in keys)
    width = cross or text
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys) or cross == 2048:
        base = "sdxl"
    elif width in BASE_BY_WIDTH:
        base = BASE_BY_WIDTH[width]
    else:
        base = f"a model attending to {width}-wide text states" if width else "an unknown base"
    return LoraInfo(path.stem, path, a1111_hash(path), base, format, cross, text, has_text, has_unet)


# ----------------------------------------------------------------------------- applying


def adapter_name(info: LoraInfo) -> str:
    """The PEFT adapter name of a LoRA file: its name made safe for module names, and its hash."""
    return re.sub(r"\W", "_", info.name) + "_" + info.hash


def check_base(info: LoraInfo, components: ModelComponents) -> None:
    """Refuse a LoRA made for another base model, saying what it is for."""
    cross = int(getattr(components.unet.config, "cross_attention_dim", 0) or 0)
    text_width = getattr(getattr(components.text_encoder, "config", None), "hidden_size", None)
    what = f"<lora:{info.name}> is a LoRA for {info.base}"
    if info.cross_width is not None and info.cross_width != cross:
        raise BadRequest("prompt", f"{what} (its UNet layers take {info.cross_width}-wide text states); "
                                   f"{components.name} ({components.family}) attends to {cross}-wide ones: "
                                   "use it with a model of its own base")
    if info.text_width is not None and info.text_width != text_width and components.family != "sdxl":
        raise BadRequest("prompt", f"{what} (its text-encoder layers are {info.text_width} wide); "
                                   f"{components.name}'s text encoder is {text_width} wide: use it with a model of its own base")
    if info.has_text and components.family == "mini":
        raise BadRequest("prompt", f"{what} with CLIP text-encoder layers; reverie-mini's text encoder is MiniLM: "
                                   "mini LoRAs are UNet-only")
    if info.format in ("lycoris-loha", "lycoris-lokr"):
        raise BadRequest("prompt", f"<lora:{info.name}> is a LyCORIS {info.format.split('-')[1]} file, which diffusers "
                                   "does not load for Stable Diffusion; use a LoRA or LoCon version of it")


def _loader(components: ModelComponents):
    """A diffusers pipeline over the cached modules, used only for its LoRA loading methods."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    scheduler = DDPMScheduler.from_config(components.scheduler_config)  # never run; the model's own, so no warning
    if getattr(components, "text_encoder_2", None) is not None:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                         text_encoder_2=components.text_encoder_2, tokenizer=components.tokenizer,
                                         tokenizer_2=components.tokenizer_2, unet=components.unet, scheduler=scheduler)
    return StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=components.unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _text_encoders(components: ModelComponents) -> list[tuple[str, torch.nn.Module]]:
    return [(part, getattr(components, part, None)) for part in _TEXT_PARTS if getattr(components, part, None) is not None]


def _adapters(module) -> set[str]:
    return set(getattr(module, "peft_config", None) or {})


def _load(components: ModelComponents, info: LoraInfo) -> None:
    """Load `info` as a named adapter on the cached modules, unless it already is. While the
    UNet's weights are not in memory (`unet_parked`: the OpenVINO runtime runs an export of it
    with the LoRA on) only its text-encoder layers are loaded; a UNet read again gets the whole
    LoRA (`forget_loras`)."""
    name = adapter_name(info)
    if name in _adapters(components.unet) or any(name in _adapters(te) for _, te in _text_encoders(components)):
        return
    parked = unet_parked(components.unet)
    if parked and not info.has_text:
        return
    from diffusers.utils import logging as diffusers_logging

    pipe = _loader(components)
    verbosity = diffusers_logging.get_verbosity()
    try:
        with warnings.catch_warnings():
            # PEFT warns whenever a second adapter joins a model: that is the point here. diffusers
            # warns that a UNet-only LoRA has nothing for the text encoder: that is what it is.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            diffusers_logging.set_verbosity_error()
            if parked:
                _load_text_part(pipe, components, info, name)
            else:
                pipe.load_lora_weights(read_lora(info.path), adapter_name=name)
    except (ValueError, RuntimeError, KeyError) as exc:
        _delete(components, name)  # a half-injected adapter must not stay on the cached model
        raise BadCheckpoint(f"{info.path.name} ({info.format} LoRA for {info.base}) could not be applied to "
                            f"{components.name}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
        _disable(components)
    if parked:
        return  # the UNet got no layers: nothing to make steady
    from .batch_invariance import steady_rows

    steady_rows(components.unet)  # the adapter's own layers, as the base's (batch_invariance.py)


def _load_text_part(pipe, components: ModelComponents, info: LoraInfo, name: str) -> None:
    """Load the text-encoder layers of `info` alone, through diffusers' loader (Stable Diffusion
    1.x/2.x, the models whose UNet runs on OpenVINO)."""
    state, alphas, metadata = pipe.lora_state_dict(read_lora(info.path), return_lora_metadata=True)
    pipe.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=components.text_encoder,
                                     adapter_name=name, metadata=metadata, _pipeline=pipe)


def forget_loras(components: ModelComponents) -> None:
    """Take every LoRA off the text encoders, for a UNet read again from its file (without the
    adapters the one it replaces had): the next use of each LoRA loads it whole, on both."""
    for name in {name for _, encoder in _text_encoders(components) for name in _adapters(encoder)}:
        _delete(components, name)


def _delete(components: ModelComponents, name: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in [components.unet] + [te for _, te in _text_encoders(components)]:
        if name in _adapters(module):
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.delete_adapter(name)
            module.peft_config.pop(name, None)


def _disable(components: ModelComponents) -> None:
    """Every adapter off: the modules compute exactly what the base model computes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in [components.unet] + [te for _, te in _text_encoders(components)]:
        if _adapters(module):
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.enable_adapters(False)


def _activate(components: ModelComponents, weighted: list[tuple[str, float, float]]) -> None:
    """Turn on these adapters, with their UNet and text-encoder weights (all others off)."""
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    unet_set = [(name, unet) for name, unet, _ in weighted if name in _adapters(components.unet)]
    if unet_set:
        components.unet.enable_lora()
        components.unet.set_adapters([n for n, _ in unet_set], [w for _, w in unet_set])
    for _, encoder in _text_encoders(components):
        text_set = [(name, text) for name, _, text in weighted if name in _adapters(encoder)]
        if text_set:
            from diffusers.loaders.lora_base import enable_lora_for_text_encoder

            enable_lora_for_text_encoder(encoder)
            set_adapters_for_text_encoder([n for n, _ in text_set], encoder, [w for _, w in text_set])


@contextmanager
def apply_loras(components: ModelComponents, uses) -> Iterator[list[LoraInfo]]:
    """Run with the LoRAs `uses` asks for (`LoraUse`s) applied to the cached `components`; yields
    their LoraInfos. Each is loaded once per cached model; a use whose weights are both 0 stays
    off (bit for bit the base). On exit (also on errors) every adapter is disabled."""
    infos = [lora_info(find_lora(use.name)) for use in uses]
    for info in infos:
        check_base(info, components)
    if not infos:
        yield []
        return
    try:
        for info in infos:
            _load(components, info)
        weighted = [(adapter_name(info), use.unet, use.text) for use, info in zip(uses, infos) if use.unet or use.text]
        if weighted:
            _activate(components, weighted)
        yield infos
    finally:
        _disable(components)


def lora_variant(uses, infos: list[LoraInfo] | None = None, part: str = "unet") -> dict | None:
    """What the UNet (`part` "text": the text encoder) runs with the LoRAs `uses` on (`infos`:
    theirs, read when not given): the ones with layers for it at a weight for it other than 0, by
    adapter name (the file's hash) with that weight, and A1111's tags as a `label`; None when
    there is none (weights 0, LoRAs for the other part only). It names the OpenVINO export of the
    part as it runs then (the UNet's: models/openvino_runtime.py, `OpenVINOUNet.for_variant`;
    the text encoder's: models/sd_bundle.py), before the LoRAs are loaded as after."""
    infos = infos if infos is not None else [lora_info(find_lora(use.name)) for use in uses]
    text = part == "text"
    running = [(use, info, use.text if text else use.unet) for use, info in zip(uses, infos)
               if (info.has_text if text else info.has_unet)]
    running = [(use, info, weight) for use, info, weight in running if weight]
    if not running:
        return None
    return {"label": " ".join(f"<lora:{use.name}:{weight:g}>" for use, _, weight in running),
            "loras": [[adapter_name(info), float(weight)] for _, info, weight in running]}


def list_lora_entries() -> list:
    """`reverie models`'s rows for the LoRAs (kind "lora"); the base is read from each file."""
    from .registry import ModelEntry

    entries = []
    for name, path in list_loras().items():
        try:
            info = lora_info(path)
            note = f"LoRA for {info.base} ({info.format}); use <lora:{name}:0.8>"
        except (BadCheckpoint, ModelNotFound, OSError) as exc:
            note = f"unreadable: {exc}"
        entries.append(ModelEntry(name, "lora", str(path), note))
    return entries
