"""Writing a trained LoRA as the kohya `.safetensors` that A1111, ComfyUI and diffusers load.

Keys (kohya sd-scripts' names, which use diffusers' module paths with `.` turned to `_`):

    lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight  [rank, in]
    lora_unet_..._to_q.lora_up.weight                                                      [out, rank]
    lora_unet_..._to_q.alpha                                                               scalar
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.*     (a CLIP text encoder's LoRA, SD 1/2)
    lora_te1_... / lora_te2_...                                 (SDXL's two encoders: CLIP-L, bigG)

SDXL LoRAs name UNet modules as kohya's sdxl_train_network writes them: its SDXL UNet
(library/sdxl_original_unet.py) is Stability's, so the names are the original (SGM) layout's,
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`, `lora_unet_middle_block_1_...`,
`lora_unet_output_blocks_0_1_...` (models/sdxl_layout.py's map). A1111 and ComfyUI map these to
their own modules directly, and diffusers' kohya loader maps them back to its blocks.

A module's update is up @ down * alpha / rank. The names come from PEFT's state dict
(`get_peft_model_state_dict`) through diffusers' `convert_state_dict_to_kohya`; two things it
does not do are done here: it writes alpha = rank whatever the run's alpha was, and it names a
lone text encoder `lora_te1_`, which kohya and A1111 spell `lora_te_` on SD 1/2.

Metadata: the `ss_*` fields kohya's train_network.py writes (ss_network_module "networks.lora",
ss_network_dim, ss_network_alpha, ss_base_model_version, ...), the `modelspec.*` fields of
Stability's model spec as kohya's sai_model_spec.py fills them for a LoRA, and
`sshs_model_hash` (the SHA-256 of the tensor data, which A1111's additional-networks reads).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save

from ..outputs.files import atomic_write

# reverie's model family -> (kohya's ss_base_model_version, modelspec architecture)
BASE_VERSIONS = {
    "sd1": ("sd_v1", "stable-diffusion-v1"),
    "sd2": ("sd_v2", "stable-diffusion-v2-512"),
    "sd2-v": ("sd_v2", "stable-diffusion-v2-768-v"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base"),
    "mini": ("reverie_mini", "reverie-mini"),
    "tiny": ("reverie_tiny_random", "reverie-tiny-random"),
}
IMPL_DIFFUSERS = "diffusers"
IMPL_STABILITY = "https://github.com/Stability-AI/generative-models"


@dataclass
class LoraMetadata:
    """What the file says about its training, in kohya's fields."""

    family: str  # reverie's: sd1, sd2, sdxl, mini, tiny
    rank: int
    alpha: float
    prediction_type: str = "epsilon"  # or v_prediction
    title: str = ""
    base_model: str = ""
    resolution: tuple[int, int] = (512, 512)
    steps: int = 0
    lr: float = 0.0
    seed: int = 0
    pictures: int = 0
    trigger: str = ""
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    started_at: float = 0.0
    text_encoder_trained: bool = False

    def fields(self) -> dict[str, str]:
        key = "sd2-v" if self.family == "sd2" and self.prediction_type == "v_prediction" else self.family
        version, architecture = BASE_VERSIONS.get(key, (self.family, self.family))
        now = datetime.datetime.now(datetime.timezone.utc)
        width, height = self.resolution
        return {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(self.rank),
            "ss_network_alpha": _number(self.alpha),
            "ss_network_args": json.dumps({}),
            "ss_base_model_version": version,
            "ss_v2": str(self.family == "sd2"),
            "ss_sd_model_name": self.base_model,
            "ss_output_name": self.title,
            "ss_resolution": f"({width}, {height})",
            "ss_max_train_steps": str(self.steps),
            "ss_learning_rate": str(self.lr),
            "ss_unet_lr": str(self.lr),
            "ss_text_encoder_lr": str(self.lr if self.text_encoder_trained else 0.0),
            "ss_network_train_unet_only": str(not self.text_encoder_trained),
            "ss_num_train_images": str(self.pictures),
            "ss_seed": str(self.seed),
            "ss_training_started_at": str(self.started_at),
            "ss_training_finished_at": str(now.timestamp()),
            "ss_tag_frequency": json.dumps(self.tag_frequency),
            "ss_training_comment": f"trigger: {self.trigger}; trained with reverie" if self.trigger else "trained with reverie",
            "modelspec.sai_model_spec": "1.0.0",
            # kohya: SD 1/2 LoRAs are "diffusers" implementations, SDXL ones Stability's
            "modelspec.implementation": IMPL_STABILITY if self.family == "sdxl" else IMPL_DIFFUSERS,
            "modelspec.architecture": f"{architecture}/lora",
            "modelspec.title": self.title,
            "modelspec.resolution": f"{width}x{height}",
            "modelspec.prediction_type": "v" if self.prediction_type == "v_prediction" else "epsilon",
            "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
            "modelspec.description": f"trigger: {self.trigger}" if self.trigger else "",
        }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def kohya_state_dict(unet, text_encoders: dict[str, torch.nn.Module], alpha: float,
                     dtype: torch.dtype = torch.float16, sgm_unet: bool = False) -> dict[str, torch.Tensor]:
    """The kohya tensors of the LoRA adapters on `unet` and on `text_encoders` ({"text_encoder": ..,
    "text_encoder_2": ..}, those that have adapters), every alpha set to `alpha`. `sgm_unet`: name
    the UNet's modules in the original SGM layout, as kohya does for SDXL."""
    unet_state = get_peft_model_state_dict(unet)
    if sgm_unet:
        from ..models.sdxl_layout import sgm_unet_keys

        unet_state = sgm_unet_keys(unet, unet_state)
    peft = {f"unet.{k}": v for k, v in unet_state.items()}
    for prefix, encoder in text_encoders.items():
        # kohya's names say text_model_encoder_layers_...: transformers 5's CLIP text models
        # dropped the `text_model` level that transformers 4 (and the checkpoints) have.
        inner = "" if hasattr(encoder, "text_model") else "text_model."
        peft.update({f"{prefix}.{inner}{k}": v for k, v in get_peft_model_state_dict(encoder).items()})
    kohya = convert_state_dict_to_kohya(peft)
    lone_encoder = "text_encoder_2" not in text_encoders
    tensors = {}
    for key, value in kohya.items():
        if lone_encoder and key.startswith("lora_te1_"):
            key = "lora_te_" + key[len("lora_te1_"):]
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha), dtype=torch.float32)
        else:
            value = value.detach().to("cpu", dtype).contiguous()
        tensors[key] = value
    return tensors


def tensor_data_hash(data: bytes) -> str:
    """SHA-256 of a safetensors file's tensor data (what follows its header): kohya's sshs_model_hash."""
    header = struct.unpack("<Q", data[:8])[0]
    return hashlib.sha256(data[8 + header:]).hexdigest()


def write_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: LoraMetadata) -> Path:
    """Write the LoRA file atomically, with kohya's metadata and the hash of its tensor data."""
    path = Path(path)
    fields = metadata.fields()
    fields["sshs_model_hash"] = tensor_data_hash(save(tensors, fields))
    data = save(tensors, fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda partial: Path(partial).write_bytes(data))
    return path
