"""Prompts as token windows: parsing a prompt's syntax into weighted tokens, cutting them into
chunks of one encoder window each, and framing each chunk with its start, end and padding.

A text encoder sees a fixed window of L tokens (77 for CLIP). Prompts longer than one window
are cut into chunks, each framed as ``start + text tokens + end + padding`` (conditioning.py
encodes them). Nothing here needs torch: a request that runs on OpenVINO alone uses it too.
Works with any Hugging Face tokenizer (or one that answers as they do) that frames text with
BOS/EOS (CLIP) or CLS/SEP (BERT-style encoders such as MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reverie.prompts.syntax import Break, parse_prompt

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
class Framing:
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
    return chunk_tokens(text, tokenizer, framing(tokenizer, None, max_length))


def token_count(text: str, tokenizer: Any, max_length: int | None = None) -> tuple[int, int]:
    """Return ``(text tokens, chunks)`` for `text`, to show users how long a prompt is."""
    chunks = tokenize_prompt(text, tokenizer, max_length)
    return sum(len(chunk) for chunk in chunks), len(chunks)


def framing(tokenizer: Any, text_encoder: Any | None, max_length: int | None) -> Framing:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    cls = getattr(tokenizer, "cls_token_id", None)
    sep = getattr(tokenizer, "sep_token_id", None)
    uses_cls_sep = bos is None and cls is not None
    start_id, end_id = (cls, sep) if uses_cls_sep else (bos, eos)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:  # GPT-style tokenizers have no pad token; they pad with the end token
        pad_id = end_id if end_id is not None else 0
    framing = Framing(start_id, end_id, pad_id, _window(tokenizer, text_encoder, max_length), uses_cls_sep)
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


def chunk_tokens(text: str, tokenizer: Any, framing: Framing) -> list[TokenChunk]:
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


def frame_rows(chunks: list[TokenChunk], framing: Framing) -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    """Each chunk framed as one encoder window: its ``input_ids``, ``attention_mask`` and
    per-token ``weights`` rows, each [n_chunks][L] (start and end tokens weigh 1, padding is masked)."""
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
    return rows, masks, weight_rows
