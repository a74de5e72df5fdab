"""Turning prompts into the cross-attention states a UNet is conditioned on.

A text encoder sees a fixed window of L tokens (77 for CLIP). Prompts longer than one
window are cut into chunks, each framed as ``start + text tokens + end + padding``,
encoded on its own and concatenated along the sequence axis; nothing is dropped.
Attention weights from the prompt syntax scale each token's hidden state.

Works with any Hugging Face tokenizer that frames text with BOS/EOS (CLIP) or CLS/SEP
(BERT-style encoders such as MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from reverie.prompts.syntax import Break, parse_prompt

__all__ = [
    "DEFAULT_WINDOW",
    "TokenChunk",
    "encode_prompt",
    "encode_prompt_batch",
    "encode_prompt_pair",
    "encode_sdxl_prompt_batch",
    "encode_sdxl_texts",
    "SDXLConditioning",
    "token_count",
    "tokenize_prompt",
]

DEFAULT_WINDOW = 77  # CLIP's window; used when a tokenizer does not state a usable one
# Tokenizers without a configured limit report ~1e30; anything above this is "unset".
_MAX_PLAUSIBLE_WINDOW = 4096
# When a chunk fills up, split after a comma found among its last this-many tokens, so a
# phrase like "red hair" is not torn across two chunks.
_COMMA_LOOKBACK = 20


@dataclass
class TokenChunk:
    """The text tokens of one encoder window (no start/end/padding) and their weights."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Framing:
    """How a tokenizer frames one window: start/end/pad ids and the window length."""

    start_id: int | None
    end_id: int | None
    pad_id: int
    window: int
    uses_cls_sep: bool

    @property
    def capacity(self) -> int:
        """Text tokens that fit in one window beside the start and end tokens."""
        return self.window - (self.start_id is not None) - (self.end_id is not None)


def tokenize_prompt(text: str, tokenizer: Any, max_length: int | None = None) -> list[TokenChunk]:
    """Parse `text` and split its weighted tokens into encoder-window chunks.

    Always returns at least one chunk (empty for an empty prompt). A chunk is full at
    the window length minus the start/end tokens; ``BREAK`` starts a new chunk.
    """
    framing = _framing(tokenizer, None, max_length)
    return _chunk_tokens(text, tokenizer, framing)


def token_count(text: str, tokenizer: Any, max_length: int | None = None) -> tuple[int, int]:
    """Return ``(text tokens, chunks)`` for `text`, to show users how long a prompt is."""
    chunks = tokenize_prompt(text, tokenizer, max_length)
    return sum(len(chunk) for chunk in chunks), len(chunks)


def encode_prompt(
    text: str,
    tokenizer: Any,
    text_encoder: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    max_length: int | None = None,
    use_attention_mask: bool | None = None,
) -> torch.Tensor:
    """Encode a prompt into cross-attention states of shape ``[1, n_chunks * L, D]``.

    `L` is the tokenizer's window (``model_max_length``, or `max_length`), capped at
    the encoder's position table. `use_attention_mask` overrides the default: CLIP
    encoders run unmasked (as SD did), others get a mask over the padding. The
    encoder runs without gradients on the device it is on; the result is moved to
    `device` and `dtype` (default: the encoder's).
    """
    framing = _framing(tokenizer, text_encoder, max_length)
    chunks = _chunk_tokens(text, tokenizer, framing)
    return _encode_chunks(chunks, framing, text_encoder, device, dtype, use_attention_mask)


def encode_prompt_pair(
    prompt: str,
    negative: str,
    tokenizer: Any,
    text_encoder: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    max_length: int | None = None,
    use_attention_mask: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a prompt and its negative prompt to states of equal shape ``(cond, uncond)``.

    Classifier-free guidance batches both, so the one with fewer chunks is padded with
    encoded empty chunks (what an empty prompt encodes to) until the lengths match.
    """
    return encode_prompt_batch([(prompt, negative)], tokenizer, text_encoder, device, dtype,
                               max_length=max_length, use_attention_mask=use_attention_mask)


def encode_prompt_batch(
    pairs: list[tuple[str, str]],
    tokenizer: Any,
    text_encoder: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    cache: dict | None = None,
    max_length: int | None = None,
    use_attention_mask: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode one (prompt, negative) pair per picture to states ``(cond, uncond)`` of shape
    ``[len(pairs), n_chunks * L, D]``, every row padded with encoded empty chunks to the longest.

    Equal pairs are encoded once; `cache` (a dict the caller keeps across batches) remembers
    them by text and chunk count. A batch of one pair is `encode_prompt_pair`.
    """
    framing = _framing(tokenizer, text_encoder, max_length)
    chunked = {pair: (_chunk_tokens(pair[0], tokenizer, framing), _chunk_tokens(pair[1], tokenizer, framing))
               for pair in dict.fromkeys(pairs)}
    n_chunks = max(max(len(cond), len(uncond)) for cond, uncond in chunked.values())
    cache = {} if cache is None else cache
    encode_args = (framing, text_encoder, device, dtype, use_attention_mask)
    for pair, (cond, uncond) in chunked.items():
        key = (pair, n_chunks)
        if key not in cache:
            cond = cond + [TokenChunk() for _ in range(n_chunks - len(cond))]
            uncond = uncond + [TokenChunk() for _ in range(n_chunks - len(uncond))]
            cache[key] = (_encode_chunks(cond, *encode_args), _encode_chunks(uncond, *encode_args))
    rows = [cache[(pair, n_chunks)] for pair in pairs]
    return torch.cat([cond for cond, _ in rows]), torch.cat([uncond for _, uncond in rows])


def _framing(tokenizer: Any, text_encoder: Any | None, max_length: int | None) -> _Framing:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    cls = getattr(tokenizer, "cls_token_id", None)
    sep = getattr(tokenizer, "sep_token_id", None)
    uses_cls_sep = bos is None and cls is not None
    start_id, end_id = (cls, sep) if uses_cls_sep else (bos, eos)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:  # GPT-style tokenizers have no pad token; they pad with the end token
        pad_id = end_id if end_id is not None else 0
    framing = _Framing(start_id, end_id, pad_id, _window(tokenizer, text_encoder, max_length), uses_cls_sep)
    if framing.capacity < 1:
        raise ValueError(f"window of {framing.window} tokens leaves no room for text")
    return framing


def _window(tokenizer: Any, text_encoder: Any | None, max_length: int | None) -> int:
    if max_length is not None:
        window = int(max_length)
    else:
        stated = getattr(tokenizer, "model_max_length", None)
        window = int(stated) if stated and stated <= _MAX_PLAUSIBLE_WINDOW else DEFAULT_WINDOW
    # A window longer than the encoder's position table would fail inside the encoder.
    positions = getattr(getattr(text_encoder, "config", None), "max_position_embeddings", None)
    return min(window, int(positions)) if positions else window


def _chunk_tokens(text: str, tokenizer: Any, framing: _Framing) -> list[TokenChunk]:
    comma_id = _comma_id(tokenizer)
    chunks: list[TokenChunk] = []
    current = TokenChunk()
    for piece in parse_prompt(text):
        if isinstance(piece, Break):
            # BREAK ends a chunk that has text; it never produces an empty chunk.
            if len(current):
                chunks.append(current)
                current = TokenChunk()
            continue
        for token_id in _text_token_ids(tokenizer, piece.text):
            if len(current) == framing.capacity:
                finished, current = _split_full_chunk(current, comma_id, framing.capacity)
                chunks.append(finished)
            current.ids.append(token_id)
            current.weights.append(piece.weight)
    if len(current) or not chunks:
        chunks.append(current)
    return chunks


def _split_full_chunk(
    chunk: TokenChunk, comma_id: int | None, capacity: int
) -> tuple[TokenChunk, TokenChunk]:
    """Split a full chunk after its last comma when that comma is near the end.

    Returns the finished chunk and the start of the next one (the tokens after the
    comma), so the phrase being written stays whole in the next window.
    """
    lookback = min(_COMMA_LOOKBACK, capacity // 2)
    if comma_id is not None:
        for index in range(len(chunk) - 1, len(chunk) - 1 - lookback, -1):
            if chunk.ids[index] == comma_id:
                cut = index + 1
                carried = TokenChunk(chunk.ids[cut:], chunk.weights[cut:])
                return TokenChunk(chunk.ids[:cut], chunk.weights[:cut]), carried
    return chunk, TokenChunk()


def _text_token_ids(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: a fragment longer than the window is expected here (we chunk it),
    # so the tokenizer's "sequence too long" warning would only mislead.
    return list(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def _comma_id(tokenizer: Any) -> int | None:
    ids = _text_token_ids(tokenizer, ",")
    return ids[0] if len(ids) == 1 else None


def _encode_chunks(
    chunks: list[TokenChunk],
    framing: _Framing,
    text_encoder: Any,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    use_attention_mask: bool | None,
    penultimate: bool = False,
    grad: bool = False,
) -> torch.Tensor:
    # The encoder runs where it lives (it may be offloaded); the result goes to `device`.
    encoder_device = getattr(text_encoder, "device", torch.device("cpu"))
    input_ids, attention_mask, weights = _frame_chunks(chunks, framing)
    if use_attention_mask is None:
        use_attention_mask = _wants_attention_mask(text_encoder, framing)
    kwargs = {"attention_mask": attention_mask.to(encoder_device)} if use_attention_mask else {}
    # no_grad rather than inference_mode: inference tensors would break callers that
    # later use the states inside autograd (e.g. gradient-based guidance). `grad`: training
    # (a text-encoder LoRA, an embedding) needs the graph through the encoder.
    with torch.set_grad_enabled(grad):
        # Chunks are rows of one batch: each is still encoded on its own, only faster.
        if penultimate:
            output = text_encoder(input_ids.to(encoder_device), output_hidden_states=True, **kwargs)
            hidden = output.hidden_states[-2]
        else:
            hidden = text_encoder(input_ids.to(encoder_device), **kwargs)[0]
        hidden = _apply_weights(hidden.float(), weights.to(hidden.device))
    # [n_chunks, L, D] -> [1, n_chunks * L, D]: the chunks side by side along the sequence.
    states = hidden.reshape(1, -1, hidden.shape[-1])
    target_dtype = dtype if dtype is not None else getattr(text_encoder, "dtype", torch.float32)
    states = states.to(device=device if device is not None else hidden.device, dtype=target_dtype)
    if penultimate:
        # SDXL's pooled text: the projected end-of-text state of the first chunk (as A1111 takes it).
        pooled = getattr(output, "text_embeds", None)
        pooled = output.pooler_output if pooled is None else pooled
        return states, pooled[:1].to(device=states.device, dtype=target_dtype)
    return states


def _wants_attention_mask(text_encoder: Any, framing: _Framing) -> bool:
    # SD conditioned its UNets on CLIP states computed without a padding mask, so CLIP
    # runs unmasked to reproduce them; bidirectional encoders (BERT, MiniLM, T5) expect
    # a mask, or the padding would blur the states of the real tokens.
    model_type = getattr(getattr(text_encoder, "config", None), "model_type", None)
    if isinstance(model_type, str):
        return "clip" not in model_type
    return framing.uses_cls_sep


def _frame_chunks(
    chunks: list[TokenChunk], framing: _Framing
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build ``input_ids``, ``attention_mask`` and per-token ``weights``, each [n_chunks, L]."""
    rows, masks, weight_rows = [], [], []
    for chunk in chunks:
        ids, weights = list(chunk.ids), list(chunk.weights)
        if framing.start_id is not None:
            ids, weights = [framing.start_id] + ids, [1.0] + weights
        if framing.end_id is not None:
            ids, weights = ids + [framing.end_id], weights + [1.0]
        padding = framing.window - len(ids)
        rows.append(ids + [framing.pad_id] * padding)
        masks.append([1] * len(ids) + [0] * padding)
        weight_rows.append(weights + [1.0] * padding)
    return torch.tensor(rows), torch.tensor(masks), torch.tensor(weight_rows, dtype=torch.float32)


def _apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's state by its weight, then restore each chunk's original mean.

    Scaling alone also shifts the overall level of the states the UNet sees: heavy
    emphasis makes the whole conditioning "louder", which reads as a different prompt
    and degrades images. Rescaling each chunk back to its unweighted mean keeps that
    level fixed, so a weight changes how much a token stands out relative to the
    others — which is what SD users expect "(word:1.3)" to mean.
    """
    if bool((weights == 1.0).all()):
        return hidden  # exact: an unweighted prompt encodes identically to plain text
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    weighted = hidden * weights.unsqueeze(-1)
    weighted_mean = weighted.mean(dim=(1, 2), keepdim=True)
    # Negative weights can push the weighted mean to zero or past it; a ratio that is
    # not positive would then blow up or negate the whole chunk, so such a chunk keeps
    # its weighted states without the rescale.
    usable = (original_mean * weighted_mean) > 0
    scale = torch.where(usable, original_mean / torch.where(usable, weighted_mean, 1.0), 1.0)
    return weighted * scale


# ----------------------------------------------------------------------------- SDXL


@dataclass
class SDXLConditioning:
    """What an SDXL UNet is conditioned on, for a batch: per-token states ``[B, n_chunks * L, D]``
    (D = 768 + 1280 for the base, 1280 for the refiner) and the pooled text ``[B, P]``, for the
    prompts (`cond`, `pooled`) and their negatives (`uncond`, `negative_pooled`)."""

    cond: torch.Tensor
    uncond: torch.Tensor
    pooled: torch.Tensor
    negative_pooled: torch.Tensor

    def to(self, device, dtype) -> "SDXLConditioning":
        return SDXLConditioning(*(t.to(device, dtype) for t in (self.cond, self.uncond, self.pooled, self.negative_pooled)))


def encode_sdxl_prompt_batch(
    pairs: list[tuple[str, str]],
    encoders: list[tuple[Any, Any]],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    cache: dict | None = None,
    zero_empty_negative: bool = False,
) -> SDXLConditioning:
    """SDXL conditioning for one (prompt, negative) pair per picture, as A1111 builds it.

    `encoders` is [(tokenizer, text_encoder), ...]: CLIP-L then OpenCLIP bigG for the base, bigG
    alone for the refiner; the last must be a CLIPTextModelWithProjection. Each encoder chunks
    and weights the prompt as `encode_prompt_batch` does (the same chunks: the tokenizers share
    one vocabulary) and gives its penultimate layer's states; they are concatenated along the
    feature axis. The pooled text is the last encoder's projection of the first chunk's
    end-of-text state, unweighted. `zero_empty_negative` (SDXL base's
    `force_zeros_for_empty_prompt`) makes an empty negative prompt all zeros, as diffusers does.
    """
    framings = [_framing(tokenizer, encoder, None) for tokenizer, encoder in encoders]
    chunked = {}
    for pair in dict.fromkeys(pairs):
        per_encoder = [(_chunk_tokens(pair[0], tok, fr), _chunk_tokens(pair[1], tok, fr))
                       for (tok, _), fr in zip(encoders, framings)]
        chunked[pair] = per_encoder
    n_chunks = max(max(len(c), len(u)) for per in chunked.values() for c, u in per)
    cache = {} if cache is None else cache
    for pair, per_encoder in chunked.items():
        key = ("sdxl", pair, n_chunks, zero_empty_negative)
        if key in cache:
            continue
        sides = {}
        for side, text in ((0, pair[0]), (1, pair[1])):
            states, pooled = _encode_sdxl_side([chunks[side] for chunks in per_encoder], n_chunks, encoders,
                                               framings, device, dtype)
            if side == 1 and zero_empty_negative and not text.strip():
                states, pooled = torch.zeros_like(states), torch.zeros_like(pooled)
            sides[side] = (states, pooled)
        cache[key] = sides
    rows = [cache[("sdxl", pair, n_chunks, zero_empty_negative)] for pair in pairs]
    return SDXLConditioning(*(torch.cat([row[side][part] for row in rows]) for side, part in ((0, 0), (1, 0), (0, 1), (1, 1))))


def encode_sdxl_texts(
    texts: list[str],
    encoders: list[tuple[Any, Any]],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL states ``[len(texts), n_chunks * L, D]`` and pooled text ``[len(texts), P]`` for texts
    alone (no negatives), encoded exactly as `encode_sdxl_prompt_batch` encodes a prompt; with
    `grad`, through the encoders' autograd graph (training: text-encoder LoRAs, embeddings)."""
    framings = [_framing(tokenizer, encoder, None) for tokenizer, encoder in encoders]
    per_text = [[_chunk_tokens(text, tok, fr) for (tok, _), fr in zip(encoders, framings)] for text in texts]
    n_chunks = max(len(chunks) for per_encoder in per_text for chunks in per_encoder)
    rows = [_encode_sdxl_side(per_encoder, n_chunks, encoders, framings, device, dtype, grad) for per_encoder in per_text]
    return torch.cat([states for states, _ in rows]), torch.cat([pooled for _, pooled in rows])


def _encode_sdxl_side(per_encoder: list[list[TokenChunk]], n_chunks: int, encoders: list[tuple[Any, Any]],
                      framings: list[_Framing], device, dtype, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One text's SDXL conditioning: each encoder's penultimate states side by side, and the last
    encoder's pooled text; every encoder's chunks padded with empty ones to `n_chunks`."""
    states, pooled = [], None
    for (_, encoder), framing, chunks in zip(encoders, framings, per_encoder):
        chunks = chunks + [TokenChunk() for _ in range(n_chunks - len(chunks))]
        encoded, pooled = _encode_chunks(chunks, framing, encoder, device, dtype, False, penultimate=True, grad=grad)
        states.append(encoded)
    return torch.cat(states, dim=-1), pooled
