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

On SDXL the word is learned in both encoders, one set of N vectors each (CLIP-L's and bigG's
input tables), and the file is the SDXL embedding A1111 and ComfyUI read: .safetensors with
`clip_l` [N, 768] and `clip_g` [N, 1280] (A1111 has no .pt form for SDXL).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import BadRequest
from ..models.embeddings import with_added_rows
from ..outputs.files import atomic_write
from .data.concept import read_concept
from .loop import Part, TrainConfig, Trainer
from .personal import Captions, Latents, Sampler, diffusion_loss, load_base, noise_scheduler, text_encoders

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
        if not (ids >= self.first).any():
            return self.table(ids)  # no new token: no graph to the vectors
        return with_added_rows(self.table, self.first, self.vectors, ids)


class Vectors(torch.nn.Module):
    """What the run trains and checkpoints: the new rows alone (`vectors`; SDXL: `clip_l`, `clip_g`)."""

    def __init__(self, tokens: dict[str, NewTokens]):
        super().__init__()
        for key, table in tokens.items():
            setattr(self, key, table.vectors)


# The file's key for each encoder's vectors: A1111's `emb_params`, or SDXL's pair.
FILE_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}


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
    vectors: torch.Tensor  # [N, width]: the (first) encoder's
    components: object
    vectors_by_key: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # as in the file


def train_embedding(folder: str | Path, model: str, out: str | Path, config: TrainConfig, settings: EmbeddingSettings,
                    quiet: bool = False) -> TrainedEmbedding:
    """Train (or resume) a textual-inversion embedding of `model`; write RUN/NAME.safetensors (or .pt)."""
    settings.check()
    out = Path(out)
    components = load_base(model)
    if components.is_sdxl and settings.fmt != "safetensors":
        raise BadRequest("format", "SDXL embeddings are .safetensors files (clip_l and clip_g); leave out --format pt")
    words = token_words(settings.token, settings.vectors)
    phrase = " ".join(words)
    resolution = settings.resolution or components.native_size
    concept = read_concept(folder, phrase, resolution, components.size_multiple, settings.buckets)
    from .device import training_device

    latents = Latents(concept, components.vae, training_device(config.device))
    components.vae.to("cpu")

    # Copies of the tokenizers with the new words: the model's own are shared with the cache.
    encoders = text_encoders(components)
    tokenizers = {name: copy.deepcopy(getattr(components, name.replace("text_encoder", "tokenizer"))) for name in encoders}
    for tokenizer in tokenizers.values():
        known = [w for w in words if w in tokenizer.get_vocab()]
        if known:
            raise BadRequest("token", f"{known[0]!r} is already a word of {model}'s vocabulary; choose a new one, e.g. \"<{settings.token.strip('<>')}-x>\"")
    tables = {name: encoder.get_input_embeddings() for name, encoder in encoders.items()}
    tokens = {}
    for name, tokenizer in tokenizers.items():
        first = len(tokenizer)
        tokenizer.add_tokens(words)
        tokens[name] = NewTokens(tables[name], first, init_vectors(tokenizer, tables[name], settings.init_word, settings.vectors))
        encoders[name].set_input_embeddings(tokens[name])
    keys = {name: FILE_KEYS[name] if components.is_sdxl else "vectors" for name in encoders}
    try:
        part = Part(Vectors({keys[name]: table for name, table in tokens.items()}), schedule="constant", ema=False,
                    weight_decay=0.0)
        trainer = Trainer({"embedding": part}, out, config, "embedding")
        for module in components.modules:
            module.to(trainer.device)
        scheduler = noise_scheduler(components)
        conditioning = Captions(components, tokenizers, trained=True)

        def step(step_index: int, rng: torch.Generator) -> dict:
            batch, captions = latents.draw(config.batch_size, rng)
            return {"loss": diffusion_loss(components.unet, scheduler, batch, conditioning(captions, batch), rng)}

        renamed = {name.replace("text_encoder", "tokenizer"): tokenizer for name, tokenizer in tokenizers.items()}
        sampler = Sampler(dataclasses.replace(components, **renamed), trainer.device, resolution)
        prompts = list(dict.fromkeys([concept.buckets[0].captions[0][0], f"a picture of {phrase}"]))

        def sample(step_index: int, samples: Path) -> None:
            sampler.grid(prompts, samples / f"embedding-{step_index:06d}.png")

        trainer.run(step, sample if config.sample_every > 0 else None, quiet=quiet)
        vectors = {keys[name]: table.vectors.detach().cpu().float().clone() for name, table in tokens.items()}
    finally:
        for name, encoder in encoders.items():
            encoder.set_input_embeddings(tables[name])  # the encoders as they were
    name = settings.name or settings.token.strip("<>") or out.name
    file = write_embedding(out / f"{name}.{settings.fmt}", vectors, name, config.steps, model)
    return TrainedEmbedding(file, next(iter(vectors.values())), components, vectors)


def write_embedding(path: Path, vectors: dict[str, torch.Tensor], name: str, step: int, model: str) -> Path:
    """A1111's embedding file: .safetensors with `emb_params` ({"vectors": ...}) or SDXL's `clip_l`
    and `clip_g`, or .pt with A1111's own dict (one encoder's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {("emb_params" if key == "vectors" else key): v.contiguous() for key, v in vectors.items()}
    if path.suffix == ".safetensors":
        metadata = {"name": name, "step": str(step), "sd_checkpoint_name": model}
        return atomic_write(path, lambda partial: save_file(tensors, partial, metadata), suffix=".safetensors")
    vectors = tensors["emb_params"]
    data = {
        "string_to_token": {"*": 265},  # A1111 writes the id of "*" in CLIP's vocabulary here
        "string_to_param": {"*": vectors},
        "name": name,
        "step": step,
        "sd_checkpoint": None,  # A1111's short hash of the base checkpoint; reverie does not compute it
        "sd_checkpoint_name": model,
    }
    return atomic_write(path, lambda partial: torch.save(data, partial), suffix=".pt")
