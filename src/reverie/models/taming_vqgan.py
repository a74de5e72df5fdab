"""VQGAN checkpoints from taming-transformers, loaded into diffusers' VQModel.

A taming VQGAN is a Lightning `.ckpt` (weights under `state_dict`) plus the YAML it was trained
with (`model.params`: `embed_dim`, `n_embed`, `ddconfig`). The encoder/decoder are the same
blocks diffusers' VQModel is built from, so the YAML maps onto a VQModel config and the keys
are renamed one by one; the 1x1 attention convolutions become linear layers. The file is read
without executing code (`single_file.read_state_dict`), and the load is strict: every weight of
the model must come from the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import BadCheckpoint, ModelNotFound
from .single_file import read_state_dict

VQGAN_TARGET = "taming.models.vqgan.VQModel"
ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
RESNET_NAMES = {"nin_shortcut": "conv_shortcut"}


def find_config(checkpoint: Path) -> Path:
    """The YAML beside a VQGAN checkpoint: same stem, or the single .yaml in its folder."""
    for candidate in (checkpoint.with_suffix(".yaml"), checkpoint.with_suffix(".yml")):
        if candidate.is_file():
            return candidate
    yamls = sorted(checkpoint.parent.glob("*.yaml"))
    if len(yamls) == 1:
        return yamls[0]
    raise ModelNotFound(
        f"no VQGAN config beside {checkpoint}: put its taming YAML next to it as "
        f"{checkpoint.with_suffix('.yaml').name} (or pass the config path)"
    )


def read_config(path: Path) -> dict:
    """`model.params` of a taming YAML, checked to describe a plain VQGAN."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
        model = data["model"]
        params = model["params"]
        ddconfig = params["ddconfig"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise BadCheckpoint(f"{path} is not a taming VQGAN config (model.params.ddconfig): {exc}") from None
    target = model.get("target", VQGAN_TARGET)
    if target != VQGAN_TARGET:
        raise BadCheckpoint(
            f"{path} describes {target}; reverie loads plain VQGANs ({VQGAN_TARGET}), "
            "such as the ImageNet f16 1024 and 16384 models"
        )
    if ddconfig.get("double_z", False):
        raise BadCheckpoint(f"{path}: ddconfig.double_z is true, which is a KL autoencoder, not a VQGAN")
    return params


def vqmodel_config(params: dict) -> dict:
    """A diffusers VQModel config equivalent to taming's `model.params`."""
    dd = params["ddconfig"]
    widths = [dd["ch"] * mult for mult in dd["ch_mult"]]
    attn_at = set(dd.get("attn_resolutions", []))
    with_attention = [dd["resolution"] // 2**level in attn_at for level in range(len(widths))]
    return {
        "in_channels": dd.get("in_channels", 3),
        "out_channels": dd.get("out_ch", 3),
        "block_out_channels": widths,
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in with_attention],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(with_attention)],
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": dd["z_channels"],
        "num_vq_embeddings": params["n_embed"],
        "vq_embed_dim": params["embed_dim"],
        "sample_size": dd["resolution"],
        "norm_num_groups": 32,
    }


def _rename_block(rest: str) -> str:
    """`block.J.x`, `attn.J.x`, `downsample.conv`... inside one level -> diffusers names."""
    kind, _, tail = rest.partition(".")
    if kind == "block":
        index, _, name = tail.partition(".")
        layer, _, param = name.partition(".")
        return f"resnets.{index}.{RESNET_NAMES.get(layer, layer)}.{param}"
    if kind == "attn":
        index, _, name = tail.partition(".")
        layer, _, param = name.partition(".")
        return f"attentions.{index}.{ATTENTION_NAMES[layer]}.{param}"
    if kind in ("downsample", "upsample"):
        return f"{kind}rs.0.{tail}"
    raise KeyError(rest)


def taming_to_diffusers_key(key: str, levels: int) -> str | None:
    """Rename one taming key; None for training-only weights (the loss and its discriminator)."""
    if key.startswith("loss."):
        return None
    if key.startswith(("quant_conv.", "post_quant_conv.", "quantize.")):
        return key
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{side}.{rest}"
    mid = re.match(r"mid\.(block_1|block_2|attn_1)\.(\w+)\.(\w+)$", rest)
    if mid:
        part, layer, param = mid.groups()
        if part == "attn_1":
            return f"{side}.mid_block.attentions.0.{ATTENTION_NAMES[layer]}.{param}"
        return f"{side}.mid_block.resnets.{int(part[-1]) - 1}.{RESNET_NAMES.get(layer, layer)}.{param}"
    level = re.match(r"(down|up)\.(\d+)\.(.+)$", rest)
    if level:
        direction, index, tail = level.groups()
        # taming numbers decoder levels from the finest; diffusers runs them in order of use.
        number = int(index) if direction == "down" else levels - 1 - int(index)
        return f"{side}.{direction}_blocks.{number}.{_rename_block(tail)}"
    raise KeyError(key)


def convert_state_dict(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in state.items():
        try:
            new = taming_to_diffusers_key(key, levels)
        except KeyError:
            raise BadCheckpoint(f"unexpected weight {key!r}: this is not a taming VQGAN checkpoint") from None
        if new is None:
            continue
        if ".attentions." in new and new.endswith("weight") and tensor.ndim == 4 and "group_norm" not in new:
            tensor = tensor[:, :, 0, 0]  # taming's 1x1 convolutions are diffusers' linear layers
        converted[new] = tensor
    return converted


def load_vqgan(checkpoint: str | Path, config: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """A diffusers VQModel filled strictly from a taming checkpoint and its YAML."""
    from diffusers import VQModel

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelNotFound(f"no VQGAN checkpoint at {checkpoint}")
    params = read_config(Path(config) if config else find_config(checkpoint))
    model_config = vqmodel_config(params)
    state = convert_state_dict(read_state_dict(checkpoint), len(model_config["block_out_channels"]))
    model = VQModel(**model_config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise BadCheckpoint(f"{checkpoint.name} does not match its config: {detail}")
    model.load_state_dict(state, strict=True)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)
