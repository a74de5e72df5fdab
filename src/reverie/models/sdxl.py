"""SDXL base and refiner from single-file checkpoints in the original (SGM) layout, offline.

What the keys say (sdxl_layout.py describes the layout):

* base    — CLIP ViT-L at `conditioner.embedders.0.transformer.` and OpenCLIP bigG at
  `conditioner.embedders.1.model.`; the UNet attends to both encoders' states side by side
  (768 + 1280 = 2048 wide);
* refiner — bigG alone at `conditioner.embedders.0.model.` (1280 wide), and an aesthetic score
  in place of the target size among its time ids.

The weights go through diffusers' own converters (`from_single_file` with the configs reverie
ships in configs/sdxl and configs/sdxl-refiner: the published ones), and the two tokenizers are
built from the open_clip wheel like SD's: the same BPE vocabulary, CLIP-L padding with
`<|endoftext|>`, bigG with "!" (as the published `tokenizer_2` does). As for SD files, nothing
is fetched and nothing from the file is executed (single_file.read_state_dict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from reverie.errors import BadCheckpoint
from reverie.models.checkpoint_header import CONFIGS_DIR, UNET_PREFIX, VAE_PREFIX
from reverie.models.clip_tokenizer import EOS_TOKEN, clip_tokenizer
from reverie.models.components import ModelComponents
from reverie.models.sdxl_layout import REFINER_OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX

SDXL_FAMILIES = ("sdxl", "sdxl-refiner")
OPEN_CLIP_PAD_TOKEN = "!"  # id 0: what SDXL's tokenizer_2 (OpenCLIP bigG) pads with

_CLIP_TOKENS = SDXL_CLIP_PREFIX + "embeddings.token_embedding.weight"
_OPEN_CLIP_TOKENS = SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight"
_REFINER_TOKENS = REFINER_OPEN_CLIP_PREFIX + "token_embedding.weight"
_UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_ADDED_EMBEDDING = UNET_PREFIX + "label_emb.0.0.weight"
_VAE_PROBE = VAE_PREFIX + "decoder.conv_out.weight"
_CONFIG_FILES = ("scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                 "text_encoder_2/config.json")


def sdxl_family(state: dict[str, torch.Tensor]) -> str | None:
    """"sdxl" or "sdxl-refiner" when the keys are SDXL's text encoders, else None."""
    if _CLIP_TOKENS in state and _OPEN_CLIP_TOKENS in state:
        return "sdxl"
    if _REFINER_TOKENS in state and REFINER_OPEN_CLIP_PREFIX + "text_projection" in state:
        return "sdxl-refiner"
    return None


def _check_layout(state: dict, family: str, name: str) -> int:
    """The UNet's input channels, after checking the parts an SDXL file must have fit together."""
    if _UNET_CONV_IN not in state:
        raise BadCheckpoint(f"{name} has SDXL text encoders but no UNet (model.diffusion_model.*)")
    if _VAE_PROBE not in state:
        raise BadCheckpoint(f"{name} has an SDXL UNet and text encoders but no VAE (first_stage_model.*)")
    if _ADDED_EMBEDDING not in state:
        raise BadCheckpoint(f"{name} has SDXL text encoders but its UNet lacks SDXL's size/crop "
                            "embedding (model.diffusion_model.label_emb.*): the file mixes parts of different models")
    in_channels = int(state[_UNET_CONV_IN].shape[1])
    if in_channels not in (4, 9):
        raise BadCheckpoint(f"{name}: SDXL UNet with {in_channels} input channels is not supported; "
                            "reverie loads text-to-image (4) and inpainting (9) models")
    if family == "sdxl":
        width = int(state[_CLIP_TOKENS].shape[1]) + int(state[_OPEN_CLIP_TOKENS].shape[1])
    else:
        width = int(state[_REFINER_TOKENS].shape[1])
    from reverie.models.single_file import _cross_attention_dim

    cross = _cross_attention_dim(state)
    if cross != width:
        raise BadCheckpoint(f"{name}: the UNet attends to {cross}-wide text states but the SDXL text encoders "
                            f"produce {width}; the file mixes parts of different models")
    return in_channels


def shipped_sdxl_config_dir(family: str) -> Path:
    """The published diffusers configs for SDXL base or refiner, shipped with reverie."""
    return CONFIGS_DIR / family


def _load_text_encoders(state: dict, folder: Path, family: str, dtype: torch.dtype, name: str):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from reverie.models.single_file import _raise_if_missing, _unfilled_parameters

    encoders = []
    wanted = [("text_encoder", CLIPTextModel, "CLIP ViT-L text encoder")] if family == "sdxl" else []
    wanted.append(("text_encoder_2", CLIPTextModelWithProjection, "OpenCLIP bigG text encoder"))
    for subfolder, cls, what in wanted:
        # The converter diffusers' own SDXL pipeline loader uses; it tells the encoders apart
        # by their key prefixes and widths.
        model = create_diffusers_clip_model_from_ldm(cls, state, config=str(folder), subfolder=subfolder,
                                                     local_files_only=True)
        _raise_if_missing(_unfilled_parameters(model), what, name)
        encoders.append(model.to(dtype).eval().requires_grad_(False))
    return (encoders[0], encoders[1]) if family == "sdxl" else (None, encoders[0])


def load_sdxl_single_file(path: Path, state: dict, family: str, *, dtype: torch.dtype = torch.float32,
                          prediction_type: str | None = None, config_dir: str | Path | None = None,
                          leave_unet: Callable[[torch.nn.Module, str], bool] | None = None,
                          with_unet: Callable[[dict], dict] = lambda state: state) -> ModelComponents:
    """SDXL base or refiner from a single file's tensors (`state`, read safely by single_file;
    the UNet's may be left unread, on the meta device: `with_unet` reads them). `leave_unet` as
    load_single_file's: asked with the UNet built from its config, True leaves it unread."""
    from reverie.models.single_file import (
        CheckpointLayout,
        _as_bad_checkpoint,
        _empty_unet,
        _load_unet,
        _load_vae,
        _scheduler_config,
        resolve_prediction_type,
    )

    in_channels = _check_layout(state, family, path.name)
    folder = Path(config_dir) if config_dir is not None else shipped_sdxl_config_dir(family)
    missing = [f for f in _CONFIG_FILES if not (folder / f).is_file()]
    if family == "sdxl" and not (folder / "text_encoder" / "config.json").is_file():
        missing.append("text_encoder/config.json")
    if missing:
        from reverie.errors import BadRequest

        raise BadRequest("config_dir", f"{folder} lacks {', '.join(missing)} (an SDXL config folder needs them)")
    layout = CheckpointLayout(family, in_channels, 0, 0)
    prediction = resolve_prediction_type(layout, state, path, prediction_type, has_config_dir=config_dir is not None)
    scheduler_config = _scheduler_config(folder, prediction)
    with _as_bad_checkpoint(path.name, family, folder):
        unet = _empty_unet(folder, in_channels, dtype) if leave_unet is not None else None
        if unet is None or not leave_unet(unet, str(path)):
            unet = _load_unet(with_unet(state), folder, in_channels, dtype, path.name)
        vae = _load_vae(state, folder, dtype, path.name)
        text_encoder, text_encoder_2 = _load_text_encoders(state, folder, family, dtype, path.name)
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    return ModelComponents(
        name=path.stem,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(pad_token=EOS_TOKEN) if text_encoder is not None else None,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
        scheduler_config=scheduler_config,
        source=str(path),
        family=family,
        config_name=folder.name,
    )
