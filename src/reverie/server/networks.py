"""LoRAs and embeddings in the studio: what a user may use, and the check of their prompts.

A user sees and uses the LoRAs of the models folder (shared by everyone: `models/Lora/`,
`models/lora/`, or LoRA files in `models/`) and their own, trained in the studio, which live in
`<data>/loras/<user_id>/` (`user_lora_folder`); their own one wins over a shared one of the same
name. Nobody else's are listed, named in an error, or found when a job runs (the job runner runs
each job inside `own_loras(its user's folder)`). A prompt names a LoRA as `<lora:NAME:W>`; a name
that is not in the user's list (a path, another user's LoRA, a typo) is refused with 422 naming
the prompt before anything is queued or charged. Embeddings come from `models/embeddings/` and are
shared; a prompt uses one by writing its name, which needs no check.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadCheckpoint, BadRequest, ModelNotFound
from ..gallery.models import User
from ..models.checkpoint_header import read_header
from ..models.own_loras import own_loras
from .state import StudioState

DEFAULT_WEIGHT = 0.8  # the weight the picker writes (A1111's extra-networks default is 1; 0.8 is the usual advice)
PROMPT_FIELDS = ("prompt", "negative_prompt", "prompts")  # a request's texts that may hold <lora:...> tags


def user_lora_folder(state: StudioState, user: User) -> Path:
    """Where `user`'s own LoRAs are kept (made when the first one is trained)."""
    return state.gallery.lora_folder(user.id)


def lora_files(state: StudioState, user: User) -> dict[str, Path]:
    """{name: file} of the LoRAs `user` may use (their own first)."""
    from ..models.lora import list_loras

    with own_loras(user_lora_folder(state, user)):
        return list_loras()


def lora_names(state: StudioState, user: User) -> list[str]:
    """The names of the LoRAs `user` may use: their own and the shared ones."""
    return sorted(lora_files(state, user))


def shared_lora_names() -> list[str]:
    """The names of the models folder's LoRAs, everyone's."""
    from ..models.lora import list_loras

    with own_loras(None):
        return sorted(list_loras())


def trigger_of(path: Path) -> str | None:
    """The trigger word a LoRA was trained with, from its metadata (reverie writes
    `modelspec.description: "trigger: WORD"`); read from the header only."""
    try:
        header = read_header(path, max_bytes=10_000_000 - 1) or {}  # a header under 10 MB
    except OSError:
        return None
    metadata = header.get("__metadata__") or {}
    description = str(metadata.get("modelspec.description", ""))
    if not description.startswith("trigger: "):
        return None
    return description.removeprefix("trigger: ").strip() or None


def list_user_loras(state: StudioState, user: User) -> list[dict]:
    """The LoRAs `user` may use: name, the base it is for, format, A1111's hash, whether it is
    their own, its trigger word when known, and the tag the picker writes."""
    from ..models.lora import lora_info

    own = user_lora_folder(state, user).resolve()
    listed = []
    for name, path in sorted(lora_files(state, user).items()):
        try:
            info = lora_info(path)
        except (BadCheckpoint, ModelNotFound, OSError):
            continue  # an unreadable file is for `reverie models` to explain, not for the picker
        listed.append({"name": name, "base": info.base, "format": info.format, "hash": info.hash,
                       "own": path.resolve().parent == own, "trigger": trigger_of(path),
                       "weight": DEFAULT_WEIGHT, "tag": f"<lora:{name}:{DEFAULT_WEIGHT:g}>"})
    return listed


def list_shared_embeddings() -> list[dict]:
    """The embeddings of the models folder: name (what a prompt writes), base, vectors, hash."""
    from ..models.embeddings import list_embeddings, read_embedding

    listed = []
    for name, path in sorted(list_embeddings().items()):
        try:
            embedding = read_embedding(path)
        except (BadCheckpoint, OSError):
            continue
        listed.append({"name": name, "base": embedding.base, "vectors": int(embedding.first.shape[0]),
                       "hash": embedding.hash})
    return listed


def _texts(part) -> list[tuple[str, str]]:
    """(field, text) of each prompt of a request that may hold a tag: as typed, and for a
    template each picture's resolved prompt too (a tag may be put together by its alternatives)."""
    from ..prompts.picture import picture_prompt
    from ..prompts.templates import is_template

    found = []
    for field in PROMPT_FIELDS:
        value = getattr(part, field, None)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and "<" in text:
                found.append((field, text))
    prompt, negative = getattr(part, "prompt", None), getattr(part, "negative_prompt", None) or ""
    if isinstance(prompt, str) and hasattr(part, "image_seeds") and (is_template(prompt) or is_template(negative)):
        for seed in part.image_seeds():
            resolved = picture_prompt(part, seed)
            found += [("prompt", resolved.prompt), ("negative_prompt", resolved.negative_prompt)]
    return found


def check_lora_tags(state: StudioState, user: User, request) -> None:
    """Every `<lora:NAME:...>` in the request's prompts (a grid's cells', a video's) names a LoRA
    `user` may use; a malformed tag, a path or an unknown name is a BadRequest naming the field."""
    from ..prompts.extra_networks import extract_loras

    known = None
    for part in request.parts():
        for field, text in _texts(part):
            for use in extract_loras(text, field)[1]:
                known = lora_names(state, user) if known is None else known
                if use.name not in known:
                    raise BadRequest(field, f"unknown LoRA {use.name[:100]!r} in <lora:...>; use a name the studio "
                                            f"lists (GET /api/v1/loras): {', '.join(known) or 'none yet'}")
