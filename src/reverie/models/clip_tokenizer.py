"""The CLIP BPE tokenizer used by Stable Diffusion, built offline.

Single-file checkpoints carry no tokenizer, and the hub is not reachable, so we rebuild
the tokenizer from the byte-pair table that ships inside the open_clip_torch wheel
(`open_clip/bpe_simple_vocab_16e6.txt.gz`). That table is the same one OpenAI's CLIP and
OpenCLIP were trained with, so the token ids match the published tokenizer exactly.

The vocabulary is laid out the way CLIP defines it:

* the 256 byte symbols (in the GPT-2 byte-to-printable-character order),
* the same 256 symbols with the end-of-word marker `</w>`,
* one token per merge, in merge order (48,894 merges),
* `<|startoftext|>` and `<|endoftext|>` last,

49,408 ids in all. The files are written once into a cache folder
(`$REVERIE_CACHE/clip-tokenizer`, default `~/.cache/reverie/clip-tokenizer`).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
from functools import lru_cache
from pathlib import Path

from ..outputs.files import write_text

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894
END_OF_WORD = "</w>"

_BPE_RESOURCE = ("open_clip", "bpe_simple_vocab_16e6.txt.gz")
_VOCAB_FILE = "vocab.json"
_MERGES_FILE = "merges.txt"
_MERGES_HEADER = "#version: 0.2"


def cache_dir() -> Path:
    """The folder reverie caches generated files in (`$REVERIE_CACHE` or ~/.cache/reverie)."""
    root = os.environ.get("REVERIE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "reverie"


def _byte_symbols() -> list[str]:
    """One printable character per byte value, in CLIP's (GPT-2's) canonical order.

    Bytes that are printable and not whitespace stand for themselves; the others are
    shifted to code points from 256 upward so that every symbol is visible text.
    """
    direct = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    shifted = [b for b in range(256) if b not in direct]
    symbols = [chr(b) for b in direct] + [chr(256 + i) for i in range(len(shifted))]
    return symbols


def _read_merges() -> list[str]:
    """The merge rules from the wheel's BPE table, as "left right" strings."""
    package, name = _BPE_RESOURCE
    try:
        raw = (importlib.resources.files(package) / name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - install problem
        raise RuntimeError(
            f"the CLIP tokenizer table is missing: install open_clip_torch, which ships {package}/{name}"
        ) from e
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    # Line 0 is a version header; the vocabulary only uses the first NUM_MERGES rules.
    merges = lines[1 : 1 + NUM_MERGES]
    if len(merges) != NUM_MERGES:  # pragma: no cover - corrupt install
        raise RuntimeError(f"{package}/{name} holds {len(merges)} merges, expected {NUM_MERGES}")
    return merges


def build_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Build CLIP's token->id vocabulary (49,408 entries) and its merge list (48,894)."""
    merges = _read_merges()
    symbols = _byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:  # pragma: no cover - would mean a changed table
        raise RuntimeError(f"built a CLIP vocabulary of {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def ensure_tokenizer_files(directory: str | os.PathLike | None = None) -> Path:
    """Write vocab.json and merges.txt into `directory` (default: the cache) unless present.

    Returns the folder. The files use the layout of the published CLIP tokenizer, so any
    tool that reads a `tokenizer/` folder of a diffusers model can read them.
    """
    folder = Path(directory) if directory is not None else cache_dir() / "clip-tokenizer"
    vocab_path, merges_path = folder / _VOCAB_FILE, folder / _MERGES_FILE
    if vocab_path.is_file() and merges_path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    write_text(vocab_path, json.dumps(vocab, ensure_ascii=False))
    write_text(merges_path, "\n".join([_MERGES_HEADER, *merges]) + "\n")
    return folder


@lru_cache(maxsize=1)
def _load_cached_files() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    folder = ensure_tokenizer_files()
    vocab = json.loads((folder / _VOCAB_FILE).read_text(encoding="utf-8"))
    lines = (folder / _MERGES_FILE).read_text(encoding="utf-8").split("\n")
    merges = tuple(tuple(line.split(" ")) for line in lines[1:] if line)
    if len(vocab) != VOCAB_SIZE or len(merges) != NUM_MERGES:
        # A damaged cache must not give a silently different tokenizer: rebuild it.
        vocab, merge_strings = build_vocab_and_merges()
        merges = tuple(tuple(m.split(" ")) for m in merge_strings)
    return vocab, merges


def clip_tokenizer(pad_token: str = EOS_TOKEN):
    """A transformers CLIPTokenizer for Stable Diffusion prompts, built without the hub.

    SD 1.x pads with `<|endoftext|>` (the default); SD 2.x pads with `"!"` (id 0).
    `model_max_length` is 77, the text encoders' context length.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _load_cached_files()
    # transformers 5.x takes the vocabulary and merges as objects; its `vocab_file=`
    # keyword is no longer a file path and silently yields a 2-token vocabulary.
    tokenizer = CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m) for m in merges],
        pad_token=pad_token,
        model_max_length=MODEL_MAX_LENGTH,
    )
    if len(tokenizer) != VOCAB_SIZE:  # pragma: no cover - guards against API drift
        raise RuntimeError(f"CLIPTokenizer was built with {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    return tokenizer
