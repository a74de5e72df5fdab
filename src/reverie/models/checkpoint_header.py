"""What a single-file checkpoint says about itself without its weights being read (no torch).

A .safetensors file starts with a JSON header naming each tensor with its dtype and shape, and
a `__metadata__` map. That, an A1111-style `<name>.yaml` beside the file and the file's name
are the evidence single_file.py weighs to tell an SD 2.x file's parameterization (768 px
v-prediction or 512 px epsilon: the weights have the same shapes); models/sd_bundle.py reads
the same evidence to serve a file without importing torch. The order of evidence is in
single_file.py's module docstring.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

from ..errors import BadRequest

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).parent / "configs"
PREDICTION_TYPES = {"epsilon", "v_prediction", "sample"}
# The original (CompVis/LDM, A1111) layout's prefixes: ldm_layout.py maps them to diffusers'
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD 1.x: CLIP ViT-L
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H
# SGM's (SDXL's): CLIP ViT-L and OpenCLIP bigG for the base, bigG alone for the refiner
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
V_PRED_MARKER = "v_pred"  # a key ComfyUI's and reverie's exporters add to v-prediction files
MODELSPEC_PREDICTION = "modelspec.prediction_type"  # kohya's and reverie's metadata: "v" or "epsilon"
MAX_HEADER_BYTES = 100 * 2**20


def read_header(path: Path, max_bytes: int = MAX_HEADER_BYTES) -> dict | None:
    """A .safetensors file's JSON header (tensor names -> dtype, shape and offsets, and its
    `__metadata__`), None where the file does not start with one of at most `max_bytes`."""
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return None
        length = int.from_bytes(head[:8], "little")
        if not 2 <= length <= min(max_bytes, path.stat().st_size - 8):
            return None
        f.seek(8)
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return None
    return header if isinstance(header, dict) else None


def metadata_prediction_hint(metadata: dict | None) -> str | None:
    """The parameterization a file's ModelSpec metadata declares, if any."""
    declared = (metadata or {}).get(MODELSPEC_PREDICTION)
    return {"v": "v_prediction", "epsilon": "epsilon"}.get(declared)


def yaml_prediction_hint(path: Path) -> str | None:
    """The parameterization an A1111-style `<name>.yaml` beside the checkpoint declares."""
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if not candidate.is_file():
            continue
        import yaml

        try:
            parameterization = yaml.safe_load(candidate.read_text())["model"]["params"].get("parameterization")
        except (yaml.YAMLError, KeyError, TypeError, AttributeError, OSError) as e:
            log.warning("ignoring %s: not an LDM model config (%s)", candidate.name, e)
            return None
        return "v_prediction" if parameterization == "v" else "epsilon"
    return None


def sd2_name_hint(stem: str) -> str | None:
    lowered = stem.lower()
    if "512" in lowered or "base" in lowered:
        return "epsilon"
    if "768" in lowered:
        return "v_prediction"
    return None


def prediction_type_of(family: str, inpainting: bool, names: Collection[str], metadata: dict | None, path: Path,
                       requested: str | None, *, has_config_dir: bool = False) -> str | None:
    """The noise parameterization of a checkpoint of `family` whose tensors are `names` (see the
    order of evidence in single_file.py). None means "whatever the config folder's scheduler
    says" (only with a custom config)."""
    if requested is not None:
        if requested not in PREDICTION_TYPES:
            raise BadRequest("prediction_type", f"expected one of {sorted(PREDICTION_TYPES)}, got {requested!r}")
        return requested
    if V_PRED_MARKER in names:
        return "v_prediction"
    declared = metadata_prediction_hint(metadata) or yaml_prediction_hint(path)
    if declared or has_config_dir:
        return declared
    if family == "sd2":
        if inpainting:
            return "epsilon"
        return sd2_name_hint(path.stem) or "v_prediction"
    return "epsilon"


def shipped_config_name(family: str, inpainting: bool, prediction_type: str | None) -> str:
    """The config folder reverie ships (under CONFIGS_DIR) for an SD 1.x or 2.x file."""
    if family == "sd1":
        return "sd1-inpainting" if inpainting else "sd1"
    # 9-channel SD 2.x is the 512 epsilon inpainting model: sd2-base plus 9 inputs.
    return "sd2" if prediction_type == "v_prediction" and not inpainting else "sd2-base"
