"""LoRAs and embeddings in a batch's prompts: taken out of (LoRA tags) or rewritten in (embedding
names) the text before it is encoded, and recorded in each picture's metadata as A1111 does.

The prompts are each picture's resolved prompt (template variant, styles), so a tag may come
from a wildcard. One batch runs one UNet: its pictures must ask for the same LoRAs.
"""

from __future__ import annotations

from ...errors import BadRequest
from ...models.components import ModelComponents
from ...models.embeddings import use_embeddings
from ...prompts.extra_networks import LoraUse, extract_pair
from ...prompts.picture import PicturePrompt, prompt_plan


def batch_prompts(components: ModelComponents, prompts: list[PicturePrompt]) -> tuple[list[tuple[str, str]], list[LoraUse]]:
    """The (prompt, negative) pairs to encode for a batch, and the LoRAs the batch applies."""
    texts, uses = [], None
    for picture in prompts:
        prompt, negative, own = extract_pair(picture.prompt, picture.negative_prompt)
        if uses is not None and own != uses:
            raise BadRequest("prompt", "the pictures of one batch ask for different LoRAs "
                                       f"({_tags(uses)} and {_tags(own)}); make them in batches of one (n_samples 1)")
        uses = own
        texts += [prompt, negative]
    texts, _ = use_embeddings(components, texts)  # the embeddings folder read once for the batch
    return list(zip(texts[0::2], texts[1::2])), uses or []


def lora_sets(request) -> set[tuple[LoraUse, ...]]:
    """The LoRA sets `request`'s pictures ask for (each as its prompt names them; () for a
    picture without): the template's variant and styles of each seed, as its batch will read it."""
    plan = prompt_plan(request)
    return {tuple(extract_pair(prompt.prompt, prompt.negative_prompt)[2])
            for prompt in map(plan, request.image_seeds())}


def _tags(uses: list[LoraUse]) -> str:
    return " ".join(use.tag() for use in uses) or "none"
