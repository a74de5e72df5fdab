"""Export diffusers models to the original CompVis / A1111 single-file key layout.

A Stable Diffusion "single file" checkpoint is one flat state dict with three prefixes:

* ``model.diffusion_model.``  the UNet, in LDM's ``input_blocks`` / ``middle_block`` /
  ``output_blocks`` numbering;
* ``first_stage_model.``      the VAE (``encoder.down.N.block.M``, ``mid.attn_1`` ...);
* ``cond_stage_model.``       the text encoder: ``transformer.text_model.*`` (Hugging Face
  CLIP) for SD 1.x, ``model.*`` (OpenCLIP, fused q/k/v) for SD 2.x.

The mapping below is derived from the module structure of the diffusers models (how
many resnets, attentions and resamplers each block holds), so it follows any
UNet/VAE of the SD shape, whatever its width or depth. Every key of each model must be
mapped; a model with parts the layout has no place for (e.g. SDXL's added embeddings)
is refused rather than exported incompletely.

Noise-schedule buffers (``betas``, ``alphas_cumprod`` ...) are not written: every
loader rebuilds them from its own configuration.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from reverie.errors import BadRequest
from reverie.models.checkpoint_header import (
    CLIP_PREFIX,
    MODELSPEC_PREDICTION,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    V_PRED_MARKER,
    VAE_PREFIX,
)
from reverie.outputs.files import atomic_write

# How Stability AI's "ModelSpec" metadata (also written by kohya's sd-scripts) names each parameterization.
_MODELSPEC_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v"}

# Inside one UNet resnet: diffusers name -> LDM ResBlock name.
_UNET_RESNET_PARTS = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
# Inside one VAE resnet only the shortcut is named differently.
_VAE_RESNET_PARTS = {"conv_shortcut.": "nin_shortcut."}
# Inside the VAE mid-block attention: diffusers linear layers -> LDM 1x1 convs.
_VAE_ATTENTION_PARTS = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
# Inside one text-encoder layer: Hugging Face CLIP name -> OpenCLIP name (q/k/v aside).
_OPEN_CLIP_LAYER_PARTS = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "self_attn.out_proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
# CLIP's initial temperature, log(1 / 0.07); OpenCLIP checkpoints carry it.
_CLIP_LOGIT_SCALE = math.log(1 / 0.07)


class _PrefixMap:
    """Renames state-dict keys by module prefix, with optional renames inside a module."""

    def __init__(self) -> None:
        self._rules: list[tuple[str, str, dict[str, str]]] = []

    def add(self, source: str, target: str, parts: dict[str, str] | None = None) -> None:
        self._rules.append((source, target, parts or {}))

    def rename(self, key: str) -> str | None:
        """The new name of `key`, or None when no rule covers it."""
        best = max((r for r in self._rules if key.startswith(r[0])), key=lambda r: len(r[0]), default=None)
        if best is None:
            return None
        source, target, parts = best
        rest = key[len(source) :]
        for old, new in parts.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        return target + rest


def _apply(mapping: _PrefixMap, state: dict[str, torch.Tensor], prefix: str, what: str) -> dict[str, torch.Tensor]:
    """Rename every key of `state`; refuse keys the layout has no place for."""
    out, unmapped = {}, []
    for key, value in state.items():
        new_key = mapping.rename(key)
        if new_key is None:
            unmapped.append(key)
        else:
            out[prefix + new_key] = value
    if unmapped:
        raise ValueError(
            f"the {what} has parts the Stable Diffusion single-file layout cannot hold: "
            f"{', '.join(unmapped[:5])}{' ...' if len(unmapped) > 5 else ''}"
        )
    return out


def _unet_map(unet) -> _PrefixMap:
    """Walk the UNet's blocks in LDM order and pair each module with its LDM name."""
    m = _PrefixMap()
    m.add("conv_in.", "input_blocks.0.0.")
    m.add("time_embedding.linear_1.", "time_embed.0.")
    m.add("time_embedding.linear_2.", "time_embed.2.")
    m.add("conv_norm_out.", "out.0.")
    m.add("conv_out.", "out.2.")

    # LDM numbers every resnet(+attention) step and every downsampler as one input block.
    index = 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            m.add(f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{index}.0.", _UNET_RESNET_PARTS)
            if attentions is not None:
                m.add(f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{index}.1.")
            index += 1
        if block.downsamplers is not None:
            m.add(f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.")
            index += 1

    # The middle block is resnet, attention, resnet in one sequence.
    m.add("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET_PARTS)
    m.add("mid_block.attentions.0.", "middle_block.1.")
    m.add("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET_PARTS)

    # Each output block is resnet [+ attention] [+ upsampler after the last one].
    index = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        count = len(block.resnets)
        for j in range(count):
            m.add(f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{index}.0.", _UNET_RESNET_PARTS)
            if attentions is not None:
                m.add(f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{index}.1.")
            if j == count - 1 and block.upsamplers is not None:
                slot = 2 if attentions is not None else 1
                m.add(f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{index}.{slot}.conv.")
            index += 1
    return m


def _vae_map(vae) -> _PrefixMap:
    """Pair the autoencoder's modules with LDM's encoder/decoder names."""
    m = _PrefixMap()
    for side in ("encoder", "decoder"):
        m.add(f"{side}.conv_in.", f"{side}.conv_in.")
        m.add(f"{side}.conv_out.", f"{side}.conv_out.")
        m.add(f"{side}.conv_norm_out.", f"{side}.norm_out.")
        m.add(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.", _VAE_RESNET_PARTS)
        m.add(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.", _VAE_RESNET_PARTS)
        m.add(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", _VAE_ATTENTION_PARTS)
    m.add("quant_conv.", "quant_conv.")
    m.add("post_quant_conv.", "post_quant_conv.")

    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            m.add(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET_PARTS)
        m.add(f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.")

    # LDM's decoder numbers its levels from the lowest resolution upward, diffusers the
    # other way round.
    levels = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = levels - 1 - i
        for j in range(len(block.resnets)):
            m.add(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{level}.block.{j}.", _VAE_RESNET_PARTS)
        m.add(f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{level}.upsample.conv.")
    return m


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under `model.diffusion_model.` in LDM numbering."""
    return _apply(_unet_map(unet), unet.state_dict(), UNET_PREFIX, "UNet")


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """The autoencoder's weights under `first_stage_model.`.

    LDM's mid-block attention uses 1x1 convolutions where diffusers uses linear layers,
    so those weights get two trailing unit dimensions ([C, C] -> [C, C, 1, 1]).
    """
    out = _apply(_vae_map(vae), vae.state_dict(), VAE_PREFIX, "VAE")
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def _text_model_state(text_encoder) -> dict[str, torch.Tensor]:
    """The CLIP text model's weights with names relative to the text model.

    transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); older versions
    and CLIPTextModelWithProjection still nest it.
    """
    state = text_encoder.state_dict()
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.startswith("text_projection.")}


def clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """SD 1.x text encoder: Hugging Face CLIP names under `cond_stage_model.transformer.text_model.`."""
    out = {CLIP_PREFIX + k: v for k, v in _text_model_state(text_encoder).items()}
    # Public SD 1.x files carry the position-id buffer (persistent in the transformers
    # versions they were made with); writing it keeps our key set the same as theirs.
    positions = text_encoder.config.max_position_embeddings
    out[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None, :]
    return out


def _open_clip_layer(state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """One text-encoder layer in OpenCLIP names, with q, k, v fused into in_proj."""
    src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
    out = {}
    for part in ("weight", "bias"):
        qkv = [state[f"{src}self_attn.{name}_proj.{part}"] for name in ("q", "k", "v")]
        out[f"{dst}attn.in_proj_{part}"] = torch.cat(qkv, dim=0)
    for key, value in state.items():
        is_qkv = ".self_attn." in key and ".out_proj." not in key
        if not key.startswith(src) or is_qkv:
            continue
        rest = key[len(src) :]
        for old, new in _OPEN_CLIP_LAYER_PARTS.items():
            if rest.startswith(old):
                out[dst + new + rest[len(old) :]] = value
                break
        else:
            raise ValueError(f"the text encoder has a part the OpenCLIP layout cannot hold: {key}")
    return out


def _identity_open_clip_layer(i: int, width: int, mlp_width: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """An all-zero OpenCLIP residual block, which passes its input through unchanged.

    SD 2.x conditions on OpenCLIP's penultimate layer, so the diffusers text encoder
    has 23 layers while public checkpoints hold all 24. The 24th is never evaluated by
    SD 2.x; writing it keeps the file's shape identical to the public ones, and zeros
    make it an exact identity for any tool that does run it.
    """
    dst = f"transformer.resblocks.{i}."
    shapes = {
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (mlp_width, width),
        "mlp.c_fc.bias": (mlp_width,),
        "mlp.c_proj.weight": (width, mlp_width),
        "mlp.c_proj.bias": (width,),
    }
    return {dst + name: torch.zeros(shape, dtype=like.dtype) for name, shape in shapes.items()}


def open_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """SD 2.x text encoder: OpenCLIP names under `cond_stage_model.model.`."""
    state = _text_model_state(text_encoder)
    config = text_encoder.config
    layers = int(config.num_hidden_layers)
    width = int(config.hidden_size)
    token_embedding = state["embeddings.token_embedding.weight"]

    out = {
        "token_embedding.weight": token_embedding,
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
    }
    for i in range(layers):
        out.update(_open_clip_layer(state, i))
    out.update(_identity_open_clip_layer(layers, width, int(config.intermediate_size), token_embedding))
    # Unused by SD 2.x (it takes per-token states, not the pooled embedding) but part of
    # every public file; an identity projection is the neutral choice.
    out["text_projection"] = torch.eye(width, dtype=token_embedding.dtype)
    out["logit_scale"] = torch.tensor(_CLIP_LOGIT_SCALE, dtype=token_embedding.dtype)

    known = {
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        "final_layer_norm.weight",
        "final_layer_norm.bias",
    }
    leftovers = [k for k in state if k not in known and not k.startswith("encoder.layers.")]
    if leftovers:
        raise ValueError(f"the text encoder has parts the OpenCLIP layout cannot hold: {', '.join(leftovers[:5])}")
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def to_ldm_state_dict(unet, vae, text_encoder, family: str) -> dict[str, torch.Tensor]:
    """One flat state dict in the original CompVis layout for an SD 1.x or 2.x model.

    `family` chooses the text-encoder layout: "sd1" (CLIP ViT-L) or "sd2"/"sd2-base"
    (OpenCLIP ViT-H). Tensors are those of the models (not copies) where possible.
    """
    if family.startswith("sd2"):
        text = open_clip_to_ldm(text_encoder)
    elif family.startswith("sd1"):
        text = clip_to_ldm(text_encoder)
    else:
        raise ValueError(f"unknown model family {family!r}: expected 'sd1' or 'sd2'")
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **text}


def _prepare_for_safetensors(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """Detach to CPU, optionally halve floats, and unshare memory (safetensors forbids sharing)."""
    out, seen = {}, set()
    for key, value in state.items():
        tensor = value.detach().to("cpu")
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        tensor = tensor.contiguous()
        if tensor.numel():
            if tensor.untyped_storage().data_ptr() in seen:  # tied weights
                tensor = tensor.clone()
            seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def modelspec_metadata(components) -> dict[str, str]:
    """ModelSpec header fields that let any loader tell 512 epsilon from 768 v-prediction."""
    prediction = (components.scheduler_config or {}).get("prediction_type", "epsilon")
    if components.family.startswith("sd1"):
        architecture = "stable-diffusion-v1"
    else:
        architecture = "stable-diffusion-v2-768-v" if prediction == "v_prediction" else "stable-diffusion-v2-512"
    size = components.native_size
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.title": components.name,
        "modelspec.resolution": f"{size}x{size}",
    }
    if prediction in _MODELSPEC_PREDICTIONS:
        metadata[MODELSPEC_PREDICTION] = _MODELSPEC_PREDICTIONS[prediction]
    return metadata


def save_single_file(components, path: str | os.PathLike, *, half: bool = False) -> Path:
    """Export `components` (a ModelComponents) as one CompVis-layout .safetensors file.

    `half=True` stores floating-point weights as float16 (half the size). The noise
    parameterization is recorded twice, so that loaders find it: as ModelSpec metadata,
    and for v-prediction as ComfyUI's `v_pred` marker key. The file is written to a
    temporary name and renamed, so a failed export never leaves a truncated checkpoint.
    """
    state = to_ldm_state_dict(components.unet, components.vae, components.text_encoder, components.family)
    return write_single_file(path, state, components, modelspec_metadata(components), half)


def write_single_file(path: str | os.PathLike, state: dict[str, torch.Tensor], components, modelspec: dict[str, str],
                      half: bool) -> Path:
    """Write a checkpoint's `state` as one .safetensors file, whole or not at all, with its
    ModelSpec metadata and, for a v-prediction model, ComfyUI's `v_pred` marker key."""
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        raise BadRequest("path", f"export writes .safetensors files; got {target.name!r}")
    if (components.scheduler_config or {}).get("prediction_type") == "v_prediction":
        state = state | {V_PRED_MARKER: torch.tensor([])}
    tensors = _prepare_for_safetensors(state, half)
    metadata = {"format": "pt", **modelspec}
    return atomic_write(target, lambda partial: save_file(tensors, partial, metadata=metadata))
