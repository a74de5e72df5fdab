"""A Stable Diffusion model as one OpenVINO bundle (models/openvino_bundle.py): its CLIP text
encoder, UNet and VAE decoder and encoder, made once and then run without torch (issue 22).

On the torch pipeline an SD 1.5 picture at 512 px peaked at 3.71 GiB, of which 0.8 GiB was the
interpreter with torch, diffusers, transformers and peft imported: more than the room between
the weights and the 3 GiB the issue asks for. `sd_source` tells, from the files alone (no
torch), whether a model is one this bundle serves: a diffusers folder of a
StableDiffusionPipeline (or StableDiffusionInpaintPipeline), or a .safetensors file in the
original (LDM) layout of SD 1.x or 2.x (an SD 2 file's parameterization, 768 px v-prediction or
512 px epsilon, told from the same evidence single_file.py weighs: checkpoint_header.py), with a
plain UNet (4 latent channels, no extra conditioning) or an inpainting one (9 channels in: the
latents, the mask and the masked picture's latents; `SDSource.inpainting`); a folder's UNet may
also be distilled with guidance, as LCM's are (the guidance scale's embedding as a further input,
`SDSource.guidance_embedding`); or SDXL base (`SDSource.sdxl`: a StableDiffusionXLPipeline
folder, or a .safetensors file in SGM's layout with both text encoders, and its inpainting
models; not its refiner). `make_sd_bundle`
(torch) loads the model as the torch path does (registry.load_model), takes the UNet's export
from OpenVINOUNet's cache (made first if missing; linked into the bundle, not copied), and
exports the text encoder (token ids -> last hidden states, unmasked, as SD was trained;
textual-inversion tokens' rows as a second input), the decoder (latents / scaling factor ->
pixels in [-1, 1]) and the encoder (pixels -> the latents' scaled mean and spread, for img2img);
SDXL's two text encoders give their penultimate layer's states, as SDXL was trained on them,
and bigG also its pooled text (`text_encoder_2`, with tokenizer_2.json: it pads with "!");
it writes the tokenizer as one tokenizer.json (read by the `tokenizers` library), the model's
noise schedule, its picture size, the VAE's latent->RGB map and what names its UNet's exports
(`unet_key`, for its LoRA sets') into the marker. The bundle lives
in `$REVERIE_CACHE/openvino/sd-<key>/`, the key naming the model's files (paths, sizes,
modification times), the precision and the exporters' versions; a model changed on disk gets a
new bundle, which replaces the old.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint_header import (CLIP_PREFIX, CONFIGS_DIR, OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX,
                                UNET_PREFIX, prediction_type_of, read_header, shipped_config_name)
from .openvino_bundle import (bundle_path, fingerprint_of, make_tile_parts, openvino_cache_dir, save_bundle,
                              torch_dtype_of, vae_parts, with_extra_rows)

log = logging.getLogger(__name__)

FORMAT = 4  # bump when a part's graph or inputs change, or what done.json holds (4: unet_key)
FOLDER_PARTS = ("unet", "text_encoder", "vae", "tokenizer", "scheduler")
SDXL_FOLDER_PARTS = ("text_encoder_2", "tokenizer_2")
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")
SDXL_PIPELINE = "StableDiffusionXLPipeline"
UNET_INPUT_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
SD1_TEXT_KEY = CLIP_PREFIX + "embeddings.token_embedding.weight"
SD2_TEXT_KEY = OPEN_CLIP_PREFIX + "token_embedding.weight"
SDXL_TEXT_KEYS = (SDXL_CLIP_PREFIX + "embeddings.token_embedding.weight",
                  SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight")


@dataclass(frozen=True)
class SDSource:
    """A Stable Diffusion model on disk that a bundle can serve: the file or folder, the files
    the bundle is made from, and the picture side it draws by default."""

    path: Path
    files: tuple[Path, ...]
    native_size: int
    unet_parameters: int  # counted from the weight files' headers
    scheduler_folder: Path  # its noise schedule's config (a file's: the one single_file.py loads it with)
    text_widths: tuple[int, ...]  # each text encoder's token width (an embedding's vectors must be as wide)
    prediction_type: str | None = None  # a file's, as single_file.py resolves it (None: the folder's config says)
    inpainting: bool = False  # a 9-channel UNet: the mask and the masked picture's latents beside the latents
    guidance_embedding: int | None = None  # a guidance-distilled UNet's (LCM's) guidance-scale embedding width
    sdxl: bool = False  # SDXL base: two text encoders (CLIP ViT-L, OpenCLIP bigG), pooled text and size/crop ids

    def scheduler_config(self) -> dict:
        """Its noise schedule before its bundle is made (the bundle's marker holds the one it ran)."""
        config = json.loads((self.scheduler_folder / "scheduler_config.json").read_text())
        return config | ({"prediction_type": self.prediction_type} if self.prediction_type else {})


def sd_source(path: Path | None) -> SDSource | None:
    """The model at `path` as an SDSource, or None where a bundle does not serve it (SDXL's
    refiner, UNets with other inputs, .ckpt files: those stay on the torch pipeline)."""
    if path is None:
        return None
    try:
        if path.is_dir():
            return _folder_source(path.resolve())
        if path.is_file() and path.suffix.lower() == ".safetensors":
            return _file_source(path.resolve())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def _folder_source(folder: Path) -> SDSource | None:
    index = json.loads((folder / "model_index.json").read_text())
    sdxl = index.get("_class_name") == SDXL_PIPELINE
    if index.get("_class_name") not in SD_PIPELINES and not sdxl:
        return None
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    if not (_served_sdxl_unet(unet) if sdxl else _served_unet(unet)):
        return None
    files = [folder / "model_index.json"]
    for part in FOLDER_PARTS + (SDXL_FOLDER_PARTS if sdxl else ()):
        files += sorted(f for f in (folder / part).iterdir() if f.is_file())
    weights = list((folder / "unet").glob("*.safetensors"))
    if not weights:  # .bin weights: their size is not told without unpickling them
        return None
    parameters = sum(math.prod(entry["shape"]) for f in weights for key, entry in (read_header(f) or {}).items()
                     if key != "__metadata__")
    side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return SDSource(folder, tuple(files), side, parameters, folder / "scheduler", _text_widths(folder, sdxl),
                    inpainting=unet["in_channels"] == 9, guidance_embedding=unet.get("time_cond_proj_dim"), sdxl=sdxl)


def _text_widths(folder: Path, sdxl: bool = False) -> tuple[int, ...]:
    """Each text encoder's token width (SDXL's two: its UNet attends to their states side by side)."""
    encoders = ("text_encoder",) + (("text_encoder_2",) if sdxl else ())
    return tuple(int(json.loads((folder / encoder / "config.json").read_text())["hidden_size"]) for encoder in encoders)


def _served_unet(config: dict) -> bool:
    """A UNet that takes latents (with an inpainting model's mask and masked picture: 9 channels),
    a timestep, text states and, distilled with guidance as LCM's are, the guidance scale's
    embedding: 4 channels out, no class or added conditioning (SDXL's) or projected text."""
    return (config.get("in_channels") in (4, 9) and config.get("out_channels") == 4
            and all(config.get(key) is None for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim")))


def _served_sdxl_unet(config: dict) -> bool:
    """SDXL base's UNet (or its inpainting models', 9 channels in): 4 channels out, the pooled
    text and size/crop ids added to its time embedding ("text_time"), nothing else (not
    guidance-distilled)."""
    return (config.get("in_channels") in (4, 9) and config.get("out_channels") == 4
            and config.get("addition_embed_type") == "text_time"
            and all(config.get(key) is None for key in ("class_embed_type", "encoder_hid_dim", "time_cond_proj_dim")))


def _file_source(file: Path) -> SDSource | None:
    header = read_header(file)
    if header is None:
        return None
    metadata = header.pop("__metadata__", None)
    sdxl = all(key in header for key in SDXL_TEXT_KEYS)  # base; the refiner has bigG alone
    family = "sd1" if SD1_TEXT_KEY in header else "sd2" if SD2_TEXT_KEY in header else "sdxl" if sdxl else None
    shape = header.get(UNET_INPUT_KEY, {}).get("shape")
    if family is None or not shape or len(shape) != 4 or shape[1] not in (4, 9):  # other UNets
        return None
    inpainting = shape[1] == 9
    prediction = prediction_type_of(family, inpainting, header.keys(), metadata, file, None)
    # what single_file.py (sdxl.py for SDXL) loads it with
    config = CONFIGS_DIR / ("sdxl" if sdxl else shipped_config_name(family, inpainting, prediction))
    unet = json.loads((config / "unet" / "config.json").read_text())
    vae = json.loads((config / "vae" / "config.json").read_text())
    side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    parameters = sum(math.prod(entry["shape"]) for key, entry in header.items() if key.startswith(UNET_PREFIX))
    return SDSource(file, (file,), side, parameters, config / "scheduler", _text_widths(config, sdxl), prediction,
                    inpainting, sdxl=sdxl)


def sd_bundle_folder(source: SDSource, precision: str, cache: Path | None = None) -> Path:
    """Where the bundle of `source` for `precision` (bf16 or f32) lives: named by its files."""
    return bundle_path("sd", FORMAT, precision, list(source.files), cache)


def lora_text_encoder_folder(source: SDSource, precision: str, variant: dict) -> Path:
    """Where the export of `source`'s text encoder (SDXL's: both) with a LoRA set on lives
    (`variant`: lora.lora_variant's for the text encoder), beside the UNet's exports: named by the
    model's bundle (its files, precision and exporters) and the set. The bundle runs it in its text
    encoders' places (methods/diffusion/compiled.py); `export_lora_text_encoder` makes it."""
    return openvino_cache_dir() / fingerprint_of({"text_encoder_of": sd_bundle_folder(source, precision).name}, variant)


# ----------------------------------------------------------------------------- making it (torch)


def make_sd_bundle(source: SDSource, folder: Path, precision: str) -> None:
    """Make the bundle of `source` into `folder` (see the module docstring); an ExportFailed
    where the UNet's export cannot be had (memory, disk, the exporter)."""
    from .latent_rgb import fit_latent_to_rgb
    from .openvino_runtime import ExportFailed, IR_NAME, OpenVINOUNet, export_blocked, fingerprint_parts
    from .registry import load_model

    started = time.perf_counter()
    dtype = torch_dtype_of(precision)
    # The UNet is left unread where its export is made already (the torch path may have made it).
    components = load_model(str(source.path), dtype,
                            leave_unet=lambda unet, where: OpenVINOUNet.exported(unet, where))
    unet, vae, text_encoder, tokenizer = components.unet, components.vae, components.text_encoder, components.tokenizer
    blocked = export_blocked(unet, components.source)
    if blocked:
        raise ExportFailed(blocked)
    unet_ir = OpenVINOUNet.load(unet, components.source).folder / IR_NAME
    vocab, width = text_encoder.get_input_embeddings().weight.shape
    parts = {
        # latents, timestep, text states (SDXL: then its pooled text and size/crop ids) -> the model's output, fp32
        "unet": unet_ir,
        "text_encoder": _text_encoder_part(text_encoder, penultimate=source.sdxl),
        **vae_parts(vae, dtype),
    }
    latent_rgb = fit_latent_to_rgb(vae).tolist()
    facts = {
        "precision": precision, "model": f"{source.path} {precision}",
        "native_size": components.native_size, "size_multiple": components.size_multiple,
        "latent_channels": int(vae.config.latent_channels), "vae_scale": components.vae_scale_factor,
        "scheduler_config": json.loads(json.dumps(dict(components.scheduler_config), default=str)),
        "tokenizer": _special_tokens(tokenizer),
        "text_mask": False, "latent_rgb": latent_rgb, "name": components.name,
        "vocab": int(vocab), "text_width": int(width),
        # What names the UNet's OpenVINO exports in their cache: with a LoRA set's variant, the
        # export the torch path made of the UNet with those LoRAs on (compiled.py runs it).
        "unet_key": fingerprint_parts(unet, components.source),
    }
    extra_files = {"tokenizer.json": _tokenizer_json(tokenizer)}
    if source.sdxl:  # bigG beside CLIP ViT-L: its penultimate states and its pooled, projected text
        text_encoder_2, tokenizer_2 = components.text_encoder_2, components.tokenizer_2
        parts["text_encoder_2"] = _text_encoder_part(text_encoder_2, penultimate=True, pooled=True)
        extra_files["tokenizer_2.json"] = _tokenizer_json(tokenizer_2)
        vocab_2, width_2 = text_encoder_2.get_input_embeddings().weight.shape
        facts |= {"sdxl": True, "tokenizer_2": _special_tokens(tokenizer_2), "vocab_2": int(vocab_2),
                  "text_width_2": int(width_2)}
    del components
    save_bundle(folder, parts, facts, replaces="model", extra_files=extra_files)
    log.info("made %s's OpenVINO bundle in %.1f s: %s", source.path, time.perf_counter() - started, folder)


def make_sd_tile_bundle(source: SDSource, folder: Path, precision: str) -> None:
    """Export `source`'s UNet and VAE for seamless tiles beside its bundle in `folder`
    (openvino_bundle.make_tile_parts): a minute or more for SD, as its own UNet's export; an
    ExportFailed, before any export, where it would not fit in memory or on disk."""
    from .openvino_runtime import ExportFailed, no_room_to_export
    from .registry import load_model

    dtype = torch_dtype_of(precision)
    components = load_model(str(source.path), dtype)
    unet, vae = components.unet, components.vae
    del components  # the text encoders (SDXL's bigG: 1.4 GB in bf16) are not exported again
    blocked = no_room_to_export(unet, folder.parent)
    if blocked:
        raise ExportFailed(blocked)
    make_tile_parts(folder, unet, vae, dtype)


def _special_tokens(tokenizer) -> dict:
    return {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                        "model_max_length")}


def _text_encoder_part(text_encoder, penultimate: bool = False, pooled: bool = False) -> tuple:
    """What save_bundle exports a text encoder from: token ids [n, 77] and rows for added
    tokens [E, D] -> last hidden states [n, 77, D], fp32; unmasked, as SD was trained. SDXL's
    (`penultimate`): the states of the layer before the last, as it was trained on them
    (conditioning._encode_chunks); bigG's (`pooled`) also its projected end-of-text state [n, P]."""
    import openvino as ov
    import torch

    def call(model, ids):
        if not penultimate:
            return model(ids)[0]
        output = model(ids, output_hidden_states=True)
        return (output.hidden_states[-2], output.text_embeds) if pooled else output.hidden_states[-2]

    width = int(text_encoder.get_input_embeddings().weight.shape[1])
    return (with_extra_rows(text_encoder, call),
            (torch.ones(1, 77, dtype=torch.int64), torch.zeros(1, width)),
            [([-1, -1], ov.Type.i64), ([-1, width], ov.Type.f32)])


def export_lora_text_encoder(folder: Path, source: SDSource, precision: str, encoders: dict, variant: dict) -> None:
    """Export the text encoders `encoders` ({part: module}: "text_encoder", and SDXL's
    "text_encoder_2") as they run now, with the LoRA set `variant` names on at its weights
    (inside lora.apply_loras), as the bundle's parts of those names are exported, into `folder`
    (`lora_text_encoder_folder`'s, not made yet: seconds for SD's CLIP, a minute for SDXL's
    bigG); an older one for the same model file, precision and set (the file changed since) is
    replaced."""
    tables = {part: encoder.get_input_embeddings() for part, encoder in encoders.items()}
    try:
        parts = {part: _text_encoder_part(encoder, penultimate=source.sdxl, pooled=part == "text_encoder_2")
                 for part, encoder in encoders.items()}
        save_bundle(folder, parts, {"lora_text_encoder": f"{source.path} {precision} {variant['label']}"},
                    replaces="lora_text_encoder")
    finally:
        for part, encoder in encoders.items():  # with_extra_rows wraps them in place: the cached encoders' own
            encoder.set_input_embeddings(tables[part])


def _tokenizer_json(tokenizer) -> str:
    """The CLIP tokenizer as the `tokenizers` library reads it (its fast form's tokenizer.json)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        backend = convert_slow_tokenizer(tokenizer)
    return backend.to_str()
