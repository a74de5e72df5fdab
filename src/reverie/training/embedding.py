"""Textual inversion (Gal et al. 2022): new words for a concept, learned in the text encoder's input.

The token ("<my-cat>") becomes N new tokens in a copy of the model's tokenizer ("<my-cat>",
"<my-cat>_1", ... as diffusers' load_textual_inversion names them), whose input vectors start
from the init word's and are the only thing that trains: the text encoder's own embedding table
is wrapped (`NewTokens`), not changed, and the wrapper is taken off at the end, so the encoder
is bit for bit what it was. The vectors are one part of the shared Trainer (resumable, progress
bar, sample grids).

The export is A1111's embedding format: RUN/NAME.safetensors holding `emb_params` [N, width],
or with `fmt="pt"` the dict A1111 itself saves ({"string_to_token", "string_to_param": {"*":
tensor}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"}), readable with
torch.load(weights_only=True).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import BadRequest
from ..outputs.files import atomic_write
from .data.concept import read_concept
from .loop import Part, TrainConfig, Trainer
from .personal import Latents, Sampler, diffusion_loss, encode_texts, load_base, noise_scheduler

FORMATS = ("safetensors", "pt")


@dataclass
class EmbeddingSettings:
    token: str
    init_word: str = "*"
    vectors: int = 1
    resolution: int | None = None
    buckets: bool = True
    name: str = ""  # the file's name, the word used in prompts; "" : the token without its brackets
    fmt: str = "safetensors"

    def check(self) -> None:
        if not self.token.strip() or any(c.isspace() for c in self.token):
            raise BadRequest("token", f"{self.token!r}: give the new word as one word without spaces, e.g. \"<my-cat>\"")
        if not 1 <= self.vectors <= 75:
            raise BadRequest("vectors", "give 1 to 75 vectors (1 to 8 are usual)")
        if not self.init_word.strip():
            raise BadRequest("init_word", "give a word close to the concept to start from, e.g. --init-word cat")
        if self.fmt not in FORMATS:
            raise BadRequest("format", f"{self.fmt!r}: write safetensors or pt")


class NewTokens(torch.nn.Module):
    """An input-embedding table with learned rows for the ids from `first` on; the table stays frozen."""

    def __init__(self, table: torch.nn.Embedding, first: int, vectors: torch.Tensor):
        super().__init__()
        self.table, self.first = table, first
        self.vectors = torch.nn.Parameter(vectors.clone())

    @property
    def weight(self) -> torch.Tensor:  # some encoders read their table's weight (dtype, device)
        return self.table.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first
        out = self.table(ids.clamp(max=self.first - 1))
        if not new.any():
            return out
        rows = self.vectors.to(out.dtype)[(ids - self.first).clamp(min=0)]
        return torch.where(new.unsqueeze(-1), rows, out)


class Vectors(torch.nn.Module):
    """What the run trains and checkpoints: the new rows alone."""

    def __init__(self, tokens: NewTokens):
        super().__init__()
        self.vectors = tokens.vectors


def token_words(token: str, count: int) -> list[str]:
    """The N tokens one embedding becomes, named as diffusers' load_textual_inversion names them."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def init_vectors(tokenizer, table: torch.nn.Embedding, word: str, count: int) -> torch.Tensor:
    """Rows to start from: the init word's token vectors, repeated to `count` (a word of several tokens in order)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise BadRequest("init_word", f"{word!r} has no tokens in this model's vocabulary; give a plain word")
    return torch.stack([table.weight[ids[i % len(ids)]].detach().float() for i in range(count)])


@dataclass
class TrainedEmbedding:
    file: Path
    vectors: torch.Tensor  # [N, width]
    components: object


def train_embedding(folder: str | Path, model: str, out: str | Path, config: TrainConfig, settings: EmbeddingSettings,
                    quiet: bool = False) -> TrainedEmbedding:
    """Train (or resume) a textual-inversion embedding of `model`; write RUN/NAME.safetensors (or .pt)."""
    settings.check()
    out = Path(out)
    components = load_base(model)
    words = token_words(settings.token, settings.vectors)
    phrase = " ".join(words)
    resolution = settings.resolution or components.native_size
    concept = read_concept(folder, phrase, resolution, components.size_multiple, settings.buckets)
    from .device import training_device

    latents = Latents(concept, components.vae, training_device(config.device))
    components.vae.to("cpu")

    # A copy of the tokenizer with the new words: the model's own one is shared with the cache.
    tokenizer = copy.deepcopy(components.tokenizer)
    known = [w for w in words if w in tokenizer.get_vocab()]
    if known:
        raise BadRequest("token", f"{known[0]!r} is already a word of {model}'s vocabulary; choose a new one, e.g. \"<{settings.token.strip('<>')}-x>\"")
    encoder = components.text_encoder
    table = encoder.get_input_embeddings()
    first = len(tokenizer)
    tokenizer.add_tokens(words)
    tokens = NewTokens(table, first, init_vectors(tokenizer, table, settings.init_word, settings.vectors))
    encoder.set_input_embeddings(tokens)
    try:
        trainer = Trainer({"embedding": Part(Vectors(tokens), schedule="constant", ema=False, weight_decay=0.0)}, out, config, "embedding")
        for module in components.modules:
            module.to(trainer.device)
        scheduler = noise_scheduler(components)

        def step(step_index: int, rng: torch.Generator) -> dict:
            batch, captions = latents.draw(config.batch_size, rng)
            return {"loss": diffusion_loss(components.unet, scheduler, batch, encode_texts(captions, tokenizer, encoder), rng)}

        sampler = Sampler(dataclasses.replace(components, tokenizer=tokenizer), trainer.device, resolution)
        prompts = list(dict.fromkeys([concept.buckets[0].captions[0][0], f"a picture of {phrase}"]))

        def sample(step_index: int, samples: Path) -> None:
            sampler.grid(prompts, samples / f"embedding-{step_index:06d}.png")

        trainer.run(step, sample if config.sample_every > 0 else None, quiet=quiet)
        vectors = tokens.vectors.detach().cpu().float().clone()
    finally:
        encoder.set_input_embeddings(table)  # the encoder as it was
    name = settings.name or settings.token.strip("<>") or out.name
    file = write_embedding(out / f"{name}.{settings.fmt}", vectors, name, config.steps, model)
    return TrainedEmbedding(file, vectors, components)


def write_embedding(path: Path, vectors: torch.Tensor, name: str, step: int, model: str) -> Path:
    """A1111's embedding file: .safetensors with `emb_params`, or .pt with A1111's own dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = vectors.contiguous()
    if path.suffix == ".safetensors":
        metadata = {"name": name, "step": str(step), "sd_checkpoint_name": model}
        return atomic_write(path, lambda partial: save_file({"emb_params": vectors}, partial, metadata), suffix=".safetensors")
    data = {
        "string_to_token": {"*": 265},  # A1111 writes the id of "*" in CLIP's vocabulary here
        "string_to_param": {"*": vectors},
        "name": name,
        "step": step,
        "sd_checkpoint": None,  # A1111's short hash of the base checkpoint; reverie does not compute it
        "sd_checkpoint_name": model,
    }
    return atomic_write(path, lambda partial: torch.save(data, partial), suffix=".pt")
