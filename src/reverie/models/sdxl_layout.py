"""Export diffusers SDXL models to the original (Stability AI "generative-models", SGM) single-file layout.

An SDXL base checkpoint (`sd_xl_base_1.0.safetensors`) is one flat state dict:

* ``model.diffusion_model.``  the UNet in LDM numbering (as SD 1.x/2.x), plus ``label_emb.0.0`` /
  ``label_emb.0.2``: the MLP that embeds the pooled text and the size/crop time ids (diffusers'
  ``add_embedding.linear_1`` / ``linear_2``);
* ``first_stage_model.``      the VAE, as SD's;
* ``conditioner.embedders.0.transformer.text_model.``  CLIP ViT-L in Hugging Face names;
* ``conditioner.embedders.1.model.``  OpenCLIP ViT-bigG in OpenCLIP names (fused q/k/v,
  ``text_projection`` stored as [width, projection], the transpose of diffusers' Linear weight).

The refiner (`sd_xl_refiner_1.0.safetensors`) has only the bigG encoder, at
``conditioner.embedders.0.model.``.

diffusers ships the reverse direction (its single-file loader) but no SGM exporter, so this map
is reverie's own; it reuses ldm_layout's UNet/VAE walk (derived from the module structure, so it
follows any width and depth, `transformer_layers_per_block` included: a SpatialTransformer keeps
diffusers' `transformer_blocks.N` names) and is tested by loading its files back through
diffusers' converters and comparing every tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from reverie.models.checkpoint_header import (  # noqa: F401 (the SGM prefixes, re-exported)
    REFINER_OPEN_CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UNET_PREFIX,
)
from reverie.models.ldm_layout import (
    _CLIP_LOGIT_SCALE,
    _apply,
    _open_clip_layer,
    _text_model_state,
    _unet_map,
    vae_to_ldm,
    write_single_file,
)


def sdxl_unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """The SDXL UNet's weights under `model.diffusion_model.`, the added-embedding MLP as `label_emb.0`."""
    mapping = _unet_map(unet)
    mapping.add("add_embedding.linear_1.", "label_emb.0.0.")
    mapping.add("add_embedding.linear_2.", "label_emb.0.2.")
    return _apply(mapping, unet.state_dict(), UNET_PREFIX, "UNet")


def sgm_unet_keys(unet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (keys under `unet`'s diffusers module paths, e.g. a LoRA's) renamed to the SGM
    layout (`down_blocks.1.attentions.0.` -> `input_blocks.4.1.`), no prefix added."""
    return _apply(_unet_map(unet), state, "", "UNet LoRA")


def sdxl_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP ViT-L (SDXL's first encoder) in Hugging Face names under `conditioner.embedders.0.transformer.`."""
    out = {SDXL_CLIP_PREFIX + k: v for k, v in _text_model_state(text_encoder).items()}
    positions = text_encoder.config.max_position_embeddings
    out[SDXL_CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None, :]
    return out


def sdxl_open_clip_to_ldm(text_encoder_2, prefix: str = SDXL_OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """OpenCLIP bigG (a CLIPTextModelWithProjection) in OpenCLIP names under `prefix`.

    Unlike SD 2.x's export, every layer is the model's own: SDXL's diffusers encoder keeps all of
    them (it reads the penultimate hidden state at run time) and its projection is real.
    """
    state = _text_model_state(text_encoder_2)
    projection = text_encoder_2.state_dict()["text_projection.weight"]
    out = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
        # OpenCLIP multiplies x @ text_projection; a Linear computes x @ weight.T.
        "text_projection": projection.T.contiguous(),
        "logit_scale": torch.tensor(_CLIP_LOGIT_SCALE, dtype=projection.dtype),
    }
    for i in range(int(text_encoder_2.config.num_hidden_layers)):
        out.update(_open_clip_layer(state, i))
    known = {"embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
             "final_layer_norm.weight", "final_layer_norm.bias"}
    leftovers = [k for k in state if k not in known and not k.startswith("encoder.layers.")
                 and not k.endswith("position_ids")]
    if leftovers:
        raise ValueError(f"the text encoder has parts the OpenCLIP layout cannot hold: {', '.join(leftovers[:5])}")
    return {prefix + k: v for k, v in out.items()}


def to_sgm_state_dict(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """One flat state dict in the original SDXL layout; `text_encoder` None writes a refiner."""
    if text_encoder is None:
        text = sdxl_open_clip_to_ldm(text_encoder_2, REFINER_OPEN_CLIP_PREFIX)
    else:
        text = {**sdxl_clip_to_ldm(text_encoder), **sdxl_open_clip_to_ldm(text_encoder_2)}
    return {**sdxl_unet_to_ldm(unet), **vae_to_ldm(vae), **text}


def sdxl_modelspec_metadata(components) -> dict[str, str]:
    """ModelSpec header fields as Stability AI's SDXL files carry them."""
    refiner = components.family == "sdxl-refiner"
    size = components.native_size
    prediction = (components.scheduler_config or {}).get("prediction_type", "epsilon")
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-refiner" if refiner else "stable-diffusion-xl-v1-base",
        "modelspec.title": components.name,
        "modelspec.resolution": f"{size}x{size}",
    }
    if prediction == "v_prediction":
        metadata["modelspec.prediction_type"] = "v"
    return metadata


def save_sdxl_single_file(components, path: str | os.PathLike, *, half: bool = False) -> Path:
    """Export SDXL `components` (family "sdxl" or "sdxl-refiner") as one SGM-layout .safetensors file."""
    state = to_sgm_state_dict(components.unet, components.vae, components.text_encoder, components.text_encoder_2)
    return write_single_file(path, state, components, sdxl_modelspec_metadata(components), half)
