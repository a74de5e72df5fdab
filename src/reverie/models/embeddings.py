"""Textual-inversion embeddings: files in `models/embeddings/`, used by writing their name in a prompt.

Formats: A1111's `.pt` (`string_to_param['*']`, read with `torch.load(weights_only=True)`, never
unpickled otherwise), A1111's `.safetensors` (`emb_params`; SDXL's `clip_l` and `clip_g`), and the
diffusers `learned_embeds` layout (one tensor under its token). Widths: SD 1.x 768, SD 2.x 1024,
reverie-mini 384 (MiniLM; what `reverie train embedding` writes for mini); an embedding of another
width is refused, saying what it is for.

An embedding's name is its file stem; a prompt word equal to it (any case, as A1111's lower-cased
CLIP tokens match) is replaced, before encoding, by the embedding's own tokens, which were added
once to the cached model's tokenizer and text encoder through diffusers' `load_textual_inversion`
(token `<emb-NAME-HASH>`, `_1`, `_2`, ... for more vectors: no word a user types can collide with
it). Weighting `(name:1.2)` then weights those tokens like any word.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadCheckpoint, BadRequest
from .components import ModelComponents

EMBEDDING_FOLDER = "embeddings"
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
BASE_BY_WIDTH = {768: "sd1", 1024: "sd2", 384: "mini"}


@dataclass(frozen=True)
class Embedding:
    """An embedding file: name, path, A1111's short hash, and its vectors per text encoder
    ("clip_l"/"emb_params" for the first, "clip_g" for SDXL's second), each [n_vectors, width]."""

    name: str
    path: Path
    hash: str  # A1111's "TI hashes" value: the first 12 hex of the whole file's sha256
    vectors: dict[str, np.ndarray]  # float32

    @property
    def width(self) -> int:
        return int(self.first.shape[-1])

    @property
    def first(self) -> np.ndarray:
        return self.vectors.get("clip_l", self.vectors.get("emb_params"))

    def rows(self, key: str) -> np.ndarray | None:
        """Its vectors for the text encoder `key` names ("clip_l": the first, SD's or SDXL's CLIP
        ViT-L; "clip_g": SDXL's bigG), None where it has none."""
        return self.vectors.get(key, self.first if key == "clip_l" else None)

    @property
    def base(self) -> str:
        if "clip_g" in self.vectors:
            return "sdxl"
        return BASE_BY_WIDTH.get(self.width, f"a text encoder {self.width} wide")

    def token(self) -> str:
        return f"<emb-{re.sub(r'[^a-z0-9]', '', self.name.lower())}-{self.hash}>"

    def tokens(self) -> list[str]:
        """The tokens it is written as: one per vector (diffusers' naming of the extra ones)."""
        first = self.token()
        return [first] + [f"{first}_{i}" for i in range(1, int(self.first.shape[0]))]


def embeddings_folder() -> Path:
    from .registry import models_dir

    return models_dir() / EMBEDDING_FOLDER


def list_embeddings() -> dict[str, Path]:
    """{name: path} of the embeddings in models/embeddings/ (and its subfolders, as A1111 reads them)."""
    folder = embeddings_folder()
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in EMBEDDING_SUFFIXES and path.stem not in found:
                found[path.stem] = path
    return found


_CACHE: dict[tuple, Embedding] = {}


def read_embedding(path: Path) -> Embedding:
    """The embedding in `path` (cached while the file is unchanged); BadCheckpoint for anything else."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE[key] = Embedding(path.stem, path, _file_hash(path), _vectors(path))
    return _CACHE[key]


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _vectors(path: Path) -> dict[str, np.ndarray]:
    """The vectors of an embedding file, float32 [n_vectors, width] per text encoder. A
    .safetensors file is read without torch; a .pt or .bin file is torch's format, read with
    torch.load(weights_only=True)."""
    what = f"{path.name} is not a textual-inversion embedding"
    if path.suffix.lower() == ".safetensors":
        state = _safetensors_state(path, what)
    else:
        import torch  # here: a .pt's pickle is torch's format

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses any pickled code: say so, never retry unsafely
            raise BadCheckpoint(f"{what} reverie can read safely ({str(exc).splitlines()[0][:200]})") from None
        if isinstance(state, dict) and isinstance(state.get("string_to_param"), dict):
            state = {**state, "string_to_param": _arrays(state["string_to_param"])}
        state = _arrays(state) if isinstance(state, dict) else _array(state)
    vectors: dict[str, np.ndarray] = {}
    if isinstance(state, dict) and isinstance(state.get("string_to_param"), dict) and "*" in state["string_to_param"]:
        vectors["emb_params"] = state["string_to_param"]["*"]
    elif isinstance(state, dict) and ("emb_params" in state or "clip_l" in state):
        vectors = {key: state[key] for key in ("emb_params", "clip_l", "clip_g") if key in state}
    elif isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), np.ndarray):
        vectors["emb_params"] = next(iter(state.values()))  # diffusers' learned_embeds: {token: vector}
    elif isinstance(state, np.ndarray):
        vectors["emb_params"] = state
    if not vectors or not all(isinstance(v, np.ndarray) for v in vectors.values()):
        raise BadCheckpoint(f"{what}: expected string_to_param (A1111 .pt), emb_params or clip_l/clip_g (.safetensors)")
    vectors = {key: (v if v.ndim == 2 else v.reshape(1, -1)).astype(np.float32) for key, v in vectors.items()}
    if any(v.ndim != 2 or v.shape[0] < 1 for v in vectors.values()):
        raise BadCheckpoint(f"{what}: its vectors have shape {[tuple(v.shape) for v in vectors.values()]}")
    return vectors


def _safetensors_state(path: Path, what: str) -> dict[str, np.ndarray]:
    """A .safetensors file's tensors as NumPy arrays, without torch (bf16 ones, which NumPy
    cannot hold, through torch)."""
    from safetensors import safe_open

    try:
        try:
            with safe_open(path, framework="numpy") as file:
                return {key: file.get_tensor(key) for key in file.keys()}
        except TypeError:  # a bf16 tensor
            from safetensors.torch import load_file

            return _arrays(load_file(path))
    except Exception as exc:  # safetensors raises its own error types
        raise BadCheckpoint(f"{what}: {exc}") from None


def _array(value):
    """A torch tensor as a float32 NumPy array (other values as they are)."""
    import torch

    return value.detach().float().numpy() if isinstance(value, torch.Tensor) else value


def _arrays(state: dict) -> dict:
    return {key: _array(value) for key, value in state.items()}


def embedding_names_in(text: str, names) -> list[str]:
    """The names that stand as words in `text` (any case), in the order of `names`."""
    return [name for name in names if _word(name).search(text)]


def _word(name: str) -> re.Pattern:
    return re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", re.IGNORECASE)


def _encoders(components: ModelComponents) -> list[tuple[str, object, object]]:
    """(vector key, tokenizer, text encoder) per text encoder of the model."""
    pairs = [("clip_l", components.tokenizer, components.text_encoder)]
    if getattr(components, "text_encoder_2", None) is not None:
        pairs.append(("clip_g", components.tokenizer_2, components.text_encoder_2))
    return pairs


def with_added_rows(table, first: int, rows, ids):
    """Token vectors of `ids` (torch) from an input-embedding `table` for the ids below `first`,
    and from `rows` [E, width] for the ids from `first` on (id first + k: row k), the tokens an
    embedding adds; one graph whichever ids come (an export traces it)."""
    import torch

    own = table(ids.clamp(max=first - 1))
    added = rows.to(own.dtype)[(ids - first).clamp(min=0)]
    return torch.where((ids >= first).unsqueeze(-1), added, own)


def check_width(embedding: Embedding, components: ModelComponents) -> None:
    """Refuse an embedding made for another text encoder, saying what it is for."""
    for key, _, encoder in _encoders(components):
        vectors = embedding.rows(key)
        width = int(encoder.get_input_embeddings().weight.shape[-1])
        if vectors is None:
            raise BadRequest("prompt", f"embedding {embedding.name} is for {embedding.base} and has no vectors for "
                                       f"{components.name}'s second text encoder (an SDXL embedding has clip_l and clip_g)")
        if int(vectors.shape[-1]) != width:
            raise BadRequest("prompt", f"embedding {embedding.name} is {int(vectors.shape[-1])} wide, for {embedding.base}; "
                                       f"{components.name}'s text encoder is {width} wide: use an embedding made for this model")


def load_embedding(components: ModelComponents, embedding: Embedding) -> None:
    """Add `embedding`'s tokens to the cached tokenizer(s) and text encoder(s), once."""
    from .lora import _loader

    check_width(embedding, components)
    for key, tokenizer, encoder in _encoders(components):
        if embedding.token() in tokenizer.get_vocab():
            continue
        import torch

        vectors = torch.from_numpy(embedding.rows(key))  # check_width: there are some
        weight = encoder.get_input_embeddings().weight
        _loader(components).load_textual_inversion(vectors.to(weight.dtype), token=embedding.token(),
                                                   tokenizer=tokenizer, text_encoder=encoder)


def use_embeddings(components: ModelComponents, texts: list[str]) -> tuple[list[str], list[Embedding]]:
    """`texts` with every embedding name written as its tokens, and the embeddings used (loaded
    onto the cached model on first use). Texts naming no embedding come back unchanged."""
    texts, used = written_as_tokens(texts)
    for embedding in used:
        load_embedding(components, embedding)
    return texts, used


def written_as_tokens(texts: list[str]) -> tuple[list[str], list[Embedding]]:
    """`texts` with every embedding name written as its tokens, and the embeddings they name, in
    the order `list_embeddings` lists them (read, not loaded onto any model; no torch)."""
    known = list_embeddings()
    if not known:
        return texts, []
    names = [name for name in known if any(_word(name).search(text) for text in texts)]
    used = [read_embedding(known[name]) for name in names]
    out = []
    for text in texts:
        for embedding in used:
            text = _word(embedding.name).sub(lambda _m, e=embedding: " ".join(e.tokens()), text)
        out.append(text)
    return out, used


def list_embedding_entries() -> list:
    """`reverie models`'s rows for the embeddings (kind "embedding")."""
    from .registry import ModelEntry

    entries = []
    for name, path in list_embeddings().items():
        try:
            embedding = read_embedding(path)
            note = f"embedding for {embedding.base}, {embedding.first.shape[0]} vector(s); write {name} in a prompt"
        except (BadCheckpoint, OSError) as exc:
            note = f"unreadable: {exc}"
        entries.append(ModelEntry(name, "embedding", str(path), note))
    return entries
