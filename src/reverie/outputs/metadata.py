"""Settings carried inside every PNG.

Two text chunks: `parameters`, in the form AUTOMATIC1111 writes and every image site reads,
and `reverie`, a JSON object with the full request, enough to re-make the picture exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from ..errors import ImageInputError
from .files import atomic_write

REVERIE_KEY = "reverie"
PARAMETERS_KEY = "parameters"
FORMAT_VERSION = 1


def a1111_parameters(prompt: str, negative_prompt: str, fields: dict) -> str:
    """The A1111 `parameters` text: the prompt, the negative prompt, then `Key: value, ...` in
    the order given (`fields` holds ready values: "Steps", "Sampler" as A1111 labels it, ...)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quoted(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def _quoted(value) -> str:
    """A value as A1111 writes it: in JSON quotes when it holds a comma, colon, quote or line break
    (a prompt template in `Template:`, `Lora hashes: "name: hash, ..."`), else as it is."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in ',:"\n') else text


def _unquoted(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value.strip('"')
    return value


def reverie_metadata(settings: dict, seed: int, index: int) -> dict:
    """The JSON written into the `reverie` chunk: the resolved request plus this image's seed."""
    return {"format": FORMAT_VERSION, "seed": seed, "index": index, "settings": settings}


# zlib level of the pictures written. PNG is lossless at every level: 1 writes the same pixels
# about 3x faster than PIL's default 6 (a request's four 256 px pictures and their grid: 50 ms
# instead of 170 ms of CPU on the 2-core machine), in files about a quarter larger (issue 22).
PNG_COMPRESS_LEVEL = 1


def save_png(image: Image.Image, path: Path, parameters: str, metadata: dict) -> Path:
    """Write `image` with both chunks; the file appears complete or not at all."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(REVERIE_KEY, json.dumps(metadata, sort_keys=True))
    return atomic_write(path, lambda partial: image.save(partial, format="PNG", pnginfo=info,
                                                         compress_level=PNG_COMPRESS_LEVEL))


def read_png_info(path: str | Path) -> dict:
    """Return {"parameters": str|None, "reverie": dict|None} from an image file."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"no image at {path}")
    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or img.info)
    except (OSError, SyntaxError) as exc:
        raise ImageInputError(f"{path} is not a readable image ({exc})") from None
    data = None
    if REVERIE_KEY in text:
        try:
            data = json.loads(text[REVERIE_KEY])
        except json.JSONDecodeError:
            raise ImageInputError(f"{path}: its reverie metadata is not valid JSON") from None
    return {"parameters": text.get(PARAMETERS_KEY), "reverie": data}


_FIELD = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_parameters(text: str) -> dict:
    """Turn an A1111 `parameters` text into request fields (prompt, negative, steps, ...).

    Images made by other tools can so be re-made here. Unknown keys are ignored.
    """
    lines = text.strip().split("\n")
    last = lines[-1] if lines and re.search(r"\bSteps:\s*\d", lines[-1]) else ""
    body = lines[:-1] if last else lines
    prompt_lines, negative_lines, target = [], [], None
    for line in body:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line.removeprefix("Negative prompt:").strip()
        (target if target is not None else prompt_lines).append(line)
    fields: dict = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": "\n".join(negative_lines).strip()}
    pairs = {key.strip(): _unquoted(value) for key, value in _FIELD.findall(last)}
    if "Steps" in pairs:
        fields["steps"] = int(pairs["Steps"])
    if "Sampler" in pairs:
        fields["sampler"] = pairs["Sampler"]  # A1111's label; the request takes labels and names alike
    if "CFG scale" in pairs:
        fields["cfg_scale"] = float(pairs["CFG scale"])
    if "Seed" in pairs:
        fields["seed"] = int(pairs["Seed"])
    if "Size" in pairs and "x" in pairs["Size"]:
        width, height = pairs["Size"].split("x")
        fields["width"], fields["height"] = int(width), int(height)
    if pairs.get("Denoising strength"):  # blank in older pictures made with the default strength
        fields["strength"] = float(pairs["Denoising strength"])
    if pairs.get("Tiling") == "True":
        fields["tile"] = True
    if pairs.get("Step cache", "").isdigit():
        fields["step_cache"] = int(pairs["Step cache"])
    if pairs.get("Decoder"):
        fields["decoder"] = pairs["Decoder"]
    if pairs.get("Runtime") in ("torch", "openvino"):
        fields["runtime"] = pairs["Runtime"]
    if pairs.get("Quantize") == "int8":
        fields["quantize"] = "int8"
    if pairs.get("Weights") in ("fp32", "fp16", "bf16"):
        fields["weights"] = pairs["Weights"]
    if "Model" in pairs and pairs["Model"]:
        fields["model"] = pairs["Model"]
    if pairs.get("Refiner"):
        fields["refiner"] = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", pairs["Refiner"])  # A1111 adds " [hash]"
        if "Refiner switch at" in pairs:
            fields["refiner_switch"] = float(pairs["Refiner switch at"])
    return fields


def picture_settings(path: str | Path) -> dict:
    """The settings of the request that made the picture at `path` (reverie's own, or read from
    A1111's text), with the picture's own seed as `picture_seed` and, for reverie's, what its
    prompt resolved to as `picture_prompt` (template, variant, encoded): what `--from` and the
    actions need."""
    info = read_png_info(path)
    if info["reverie"]:
        data = info["reverie"]
        return dict(data["settings"]) | {"picture_seed": data["seed"], "picture_prompt": data.get("prompt")}
    if info["parameters"]:
        fields = parse_a1111_parameters(info["parameters"])
        return fields | {"picture_seed": fields.get("seed"), "n_samples": 1}
    raise ImageInputError(f"{path} carries no generation settings (no 'parameters' or 'reverie' text chunk)")
