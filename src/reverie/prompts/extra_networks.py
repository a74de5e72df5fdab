"""A1111's extra networks in prompts: `<lora:NAME>`, `<lora:NAME:W>`, `<lora:NAME:W_UNET:W_TE>`.

The tags may stand anywhere in the prompt or the negative prompt; they are taken out of the text
before it is encoded (the text keeps the rest exactly, as A1111 does) and become `LoraUse`s.
`<lyco:...>`, the old LyCORIS extension's spelling, is read as `<lora:...>`. Any other `<...>`
is plain text (an embedding may well be called `<my-cat>`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import BadRequest

__all__ = ["LoraUse", "extract_loras", "extract_pair"]

_TAG_START = re.compile(r"<(lora|lyco):", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*$")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA asked for by a prompt: its name and its weights on the UNet and the text encoder."""

    name: str
    unet: float = 1.0
    text: float = 1.0

    def tag(self) -> str:
        """The tag that asks for it, as A1111 writes it."""
        if self.unet == self.text:
            return f"<lora:{self.name}:{self.unet:g}>"
        return f"<lora:{self.name}:{self.unet:g}:{self.text:g}>"


def names_a_lora(text: str) -> bool:
    """Whether `text` holds a `<lora:...>` (or `<lyco:...>`) tag."""
    return _TAG_START.search(text) is not None


def extract_loras(prompt: str, field: str = "prompt") -> tuple[str, list[LoraUse]]:
    """`prompt` without its `<lora:...>` tags, and the uses in order. A malformed tag or the same
    name twice is a BadRequest naming `field` and the character where the tag starts."""
    uses: list[LoraUse] = []
    pieces: list[str] = []
    position = 0
    for match in _TAG_START.finditer(prompt):
        start = match.start()
        if start < position:
            continue  # inside a tag already read (cannot happen: names hold no "<")
        end = prompt.find(">", match.end())
        if end < 0:
            raise BadRequest(field, f"the <{match.group(1)}:...> tag at character {start + 1} is not closed with '>'")
        use = _parse_tag(prompt[match.end():end], field, start)
        if any(seen.name == use.name for seen in uses):
            raise BadRequest(field, f"<lora:{use.name}:...> is given twice (again at character {start + 1}); "
                                    "give each LoRA once, with the weight you want")
        uses.append(use)
        pieces.append(prompt[position:start])
        position = end + 1
    if not uses:
        return prompt, []
    pieces.append(prompt[position:])
    return "".join(pieces), uses


def extract_pair(prompt: str, negative: str) -> tuple[str, str, list[LoraUse]]:
    """Both prompts without their tags and the uses of both (prompt's first); a name in both is
    the same LoRA twice (one set of weights applies to the whole picture)."""
    prompt, uses = extract_loras(prompt, "prompt")
    negative, negative_uses = extract_loras(negative, "negative_prompt")
    for use in negative_uses:
        if any(seen.name == use.name for seen in uses):
            raise BadRequest("negative_prompt", f"<lora:{use.name}:...> is in the prompt too; give each LoRA once")
    return prompt, negative, uses + negative_uses


def _parse_tag(body: str, field: str, start: int) -> LoraUse:
    parts = body.split(":")
    name = parts[0].strip()
    where = f"the tag at character {start + 1}"
    if not name:
        raise BadRequest(field, f"{where} has no LoRA name; write <lora:NAME:0.8>")
    if len(parts) > 3:
        raise BadRequest(field, f"{where} has {len(parts) - 1} weights; write <lora:{name}:W> or <lora:{name}:W_UNET:W_TE>")
    weights = []
    for text in parts[1:]:
        if not _NUMBER.match(text) or not math.isfinite(float(text)):
            raise BadRequest(field, f"{where}: {text.strip()!r} is not a weight; write a number such as <lora:{name}:0.8>")
        weights.append(float(text))
    unet = weights[0] if weights else 1.0
    text_weight = weights[1] if len(weights) > 1 else unet
    return LoraUse(name, unet, text_weight)
