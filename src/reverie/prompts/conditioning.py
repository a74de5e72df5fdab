"""Turning prompts into the cross-attention states a UNet is conditioned on.

A text encoder sees a fixed window of L tokens (77 for CLIP). Prompts longer than one
window are cut into chunks, each framed as ``start + text tokens + end + padding``
(tokens.py), encoded on its own and concatenated along the sequence axis; nothing is dropped.
Attention weights from the prompt syntax scale each token's hidden state.

Works with any Hugging Face tokenizer that frames text with BOS/EOS (CLIP) or CLS/SEP
(BERT-style encoders such as MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reverie.prompts.tokens import DEFAULT_WINDOW, TokenChunk, frame_rows, token_count, tokenize_prompt
from reverie.prompts.tokens import Framing as _Framing, chunk_tokens as _chunk_tokens, framing as _framing

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
    """``input_ids``, ``attention_mask`` and per-token ``weights``, each [n_chunks, L] (`frame_rows`)."""
    rows, masks, weight_rows = frame_rows(chunks, framing)
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
