"""Midjourney's actions on one picture of a grid: upscale, vary, zoom out, pan, reroll.

Each action is a request built from the picture's own settings (its stored request: prompt,
negative prompt, model, steps, CFG, sampler, styles, ...) with the picture itself as the init
image. The table `ACTIONS` is data; `fields_for_action` is the one mapping every front door
uses (the CLI, the Python API, the native API and so the page). No tensor is touched here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BadRequest

# V's two strengths, chosen by looking at reverie-mini's results (docs/prompt-craft.md): at 0.35
# a variation is hardly told from its source (the distance is the round trip's); at 0.5 shapes and
# colours stay and details change; at 0.7 the subject and palette stay but the composition moves.
VARY_SUBTLE = 0.5
VARY_STRONG = 0.7
UPSCALE_FACTOR = 2
PAN_FRACTION = 0.5  # a pan adds half the picture's side on that side, as Midjourney's does
OUTPAINT_BLUR = 8  # the seam fades over this many pixels into the new area (as `reverie outpaint`)

DIFFUSION_MODES = ("txt2img", "img2img", "variations", "inpaint", "outpaint")
# Fields that say what shape of request made the picture, not how it looks: an action sets its own.
SHAPE_FIELDS = {"mode", "seed", "keep_only", "made", "init_image", "mask_image", "mask_mode", "mask_blur",
                "strength", "width", "height", "aspect_ratio", "upscale", "outpaint_left", "outpaint_right",
                "outpaint_up", "outpaint_down"}


@dataclass(frozen=True)
class Action:
    """One button: `mode` is the method that does it; the rest say how far."""

    name: str
    label: str  # the button's text (Midjourney's: U, V, arrows)
    title: str  # its name in words (the button's accessible name)
    description: str
    mode: str
    strength: float | None = None
    zoom: float | None = None  # zoom out: the canvas grows this many times, brought back to the picture's size
    pan: str | None = None  # pan: the side that grows (left, right, up, down)


ACTIONS = {action.name: action for action in (
    Action("upscale", "U", "Upscale", f"this picture {UPSCALE_FACTOR}x larger (the built-in upscaler)", "upscale"),
    Action("vary_subtle", "V subtle", "Vary (subtle)", f"variations close to this picture (strength {VARY_SUBTLE})", "variations",
           strength=VARY_SUBTLE),
    Action("vary_strong", "V strong", "Vary (strong)", f"variations further from this picture (strength {VARY_STRONG})", "variations",
           strength=VARY_STRONG),
    Action("reroll", "Reroll", "Reroll", "the same request again with a new seed: as many pictures as it made", "reroll"),
    Action("zoom_out_1.5", "Zoom 1.5x", "Zoom out 1.5x", "outpaint every side to 1.5x the canvas, shown at this picture's size",
           "outpaint", zoom=1.5),
    Action("zoom_out_2", "Zoom 2x", "Zoom out 2x", "outpaint every side to 2x the canvas, shown at this picture's size",
           "outpaint", zoom=2.0),
    Action("pan_left", "←", "Pan left", "outpaint half the width more on the left (the canvas grows)", "outpaint", pan="left"),
    Action("pan_right", "→", "Pan right", "outpaint half the width more on the right (the canvas grows)", "outpaint", pan="right"),
    Action("pan_up", "↑", "Pan up", "outpaint half the height more at the top (the canvas grows)", "outpaint", pan="up"),
    Action("pan_down", "↓", "Pan down", "outpaint half the height more at the bottom (the canvas grows)", "outpaint", pan="down"),
)}


def action_named(name: str) -> Action:
    """The action called `name`; an unknown one is a BadRequest listing the valid names."""
    if name not in ACTIONS:
        raise BadRequest("action", f"unknown action {name!r}; the actions are: {', '.join(ACTIONS)}")
    return ACTIONS[name]


def fields_for_action(settings: dict, action: str, picture: str | Path, size: tuple[int, int] | None = None) -> dict:
    """The request fields of `action` on the picture at `picture`, whose stored settings (the
    request that made it: `picture_settings`, a gallery row) are `settings`. `size` is the
    picture's (read from the file when None). The seed is left out: a new one is drawn."""
    chosen = action_named(action)
    if chosen.mode == "reroll":
        return _reroll(settings)
    if chosen.mode == "upscale":
        return {"mode": "upscale", "init_image": str(picture), "upscale": UPSCALE_FACTOR}
    mode = settings.get("mode", "txt2img")
    if mode not in DIFFUSION_MODES:
        raise BadRequest("action", f"{action} redraws the picture with its prompt and model, and this one was made "
                         f"by mode {mode}; upscale or reroll it")
    fields = _look(settings, chosen.mode) | {"mode": chosen.mode, "init_image": str(picture)}
    if chosen.strength is not None:
        return fields | {"strength": chosen.strength}
    width, height = size or _size_of(picture)
    if chosen.zoom:
        return fields | zoom_extents(width, height, chosen.zoom) | {"mask_blur": OUTPAINT_BLUR}
    return fields | pan_extents(width, height, chosen.pan) | {"mask_blur": OUTPAINT_BLUR}


def zoom_extents(width: int, height: int, zoom: float) -> dict:
    """Outpaint every side so the canvas is `zoom` times the picture, and ask for the picture's own
    size back (the outpaint request works at width x height: the canvas is shrunk to it, so the
    result shows more of the scene in the same pixels)."""
    extra_w, extra_h = round(width * (zoom - 1)), round(height * (zoom - 1))
    return {"outpaint_left": extra_w // 2, "outpaint_right": extra_w - extra_w // 2,
            "outpaint_up": extra_h // 2, "outpaint_down": extra_h - extra_h // 2,
            "width": _multiple_of_8(width), "height": _multiple_of_8(height)}


def pan_extents(width: int, height: int, side: str) -> dict:
    """Outpaint one side by PAN_FRACTION of the picture's side along it; the canvas grows."""
    along = width if side in ("left", "right") else height
    return {f"outpaint_{side}": round(along * PAN_FRACTION)}


def _look(settings: dict, mode: str) -> dict:
    """What makes the picture look as it does (prompt, model, sampling, styles, and whatever
    fields the request model has), without the fields that say what shape of request made it."""
    look = _request_fields(settings, mode, SHAPE_FIELDS)
    own = settings.get("picture_prompt")
    if isinstance(own, dict) and "variant" in own:  # the words it was drawn from (its variant, expanded), not new ones
        look |= {"prompt": own.get("expanded") or own["variant"], "negative_prompt": own.get("negative_variant", ""),
                 "combinatorial": False, "expand": False}
    return look


def _reroll(settings: dict) -> dict:
    """The request that made the picture, with a new seed: as many pictures as it made (a picture
    re-made alone by `--from` rerolls its whole batch)."""
    mode = settings.get("mode", "txt2img")
    return _request_fields(settings, mode, {"seed", "keep_only", "made"}) | {"mode": mode}


def _request_fields(settings: dict, mode: str, leave_out: set[str]) -> dict:
    """The stored settings that mode's request takes, less `leave_out`."""
    from .methods.registry import method_for

    known = method_for(mode).request.model_fields
    return {key: value for key, value in settings.items() if key in known and key not in leave_out}


def _size_of(picture: str | Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(picture) as image:  # the header only
        return image.size


def _multiple_of_8(side: int) -> int:
    return max(64, side - side % 8)
