"""Textual-inversion embeddings: A1111 .pt (weights_only) and .safetensors, SD1 (768) / SD2 (1024) /
reverie-mini (384) widths, used by name and weighted like any word."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import pixels
from reverie.errors import BadCheckpoint, BadRequest
from reverie.models.clip_tokenizer import clip_tokenizer
from reverie.models.components import ModelComponents
from reverie.models.embeddings import list_embeddings, read_embedding, use_embeddings
from reverie.models.tiny import SD_SCHEDULE, build_tiny, tiny_text_encoder
from reverie.prompts.conditioning import encode_prompt
from reverie.studio import Studio

FAST = dict(model="tiny-random", steps=2, width=64, height=64, seed=3, n_samples=1)


def a1111_pt(path, vectors: torch.Tensor, name: str):
    """What A1111's textual inversion training saves."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": 500,
                "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5"}, path)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "embeddings").mkdir(parents=True)
    monkeypatch.setenv("REVERIE_MODELS", str(root))
    g = torch.Generator().manual_seed(0)
    a1111_pt(root / "embeddings" / "inkcat.pt", torch.randn(2, 32, generator=g), "inkcat")
    save_file({"emb_params": torch.randn(1, 32, generator=g)}, str(root / "embeddings" / "Bad-Hands.safetensors"))
    save_file({"emb_params": torch.randn(3, 768, generator=g)}, str(root / "embeddings" / "sd1emb.safetensors"))
    a1111_pt(root / "embeddings" / "sd2emb.pt", torch.randn(2, 1024, generator=g), "sd2emb")
    return root / "embeddings"


def wide_model(width: int) -> ModelComponents:
    """A model whose CLIP text encoder is `width` wide (SD1 768, SD2 1024); the rest tiny."""
    tiny = build_tiny()
    torch.manual_seed(0)
    encoder = tiny_text_encoder(hidden_size=width).eval()
    return ModelComponents(f"clip-{width}", tiny.unet, tiny.vae, encoder, clip_tokenizer(), dict(SD_SCHEDULE), family="sd1")


def test_reads_both_formats(folder):
    assert set(list_embeddings()) == {"inkcat", "Bad-Hands", "sd1emb", "sd2emb"}
    assert read_embedding(folder / "inkcat.pt").first.shape == (2, 32)
    assert read_embedding(folder / "sd1emb.safetensors").base == "sd1"
    assert read_embedding(folder / "sd2emb.pt").base == "sd2"


def test_pickled_code_is_refused(folder):
    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"string_to_param": {"*": Boom()}}, folder / "evil.pt")
    with pytest.raises(BadCheckpoint, match="safely"):
        read_embedding(folder / "evil.pt")


def test_unknown_shape_is_refused(folder):
    save_file({"a": torch.randn(4), "b": torch.randn(2)}, str(folder / "odd2.safetensors"))
    with pytest.raises(BadCheckpoint, match="not a textual-inversion embedding"):
        read_embedding(folder / "odd2.safetensors")


@pytest.mark.parametrize("name, width", [("sd1emb", 768), ("sd2emb", 1024)])
def test_sd1_and_sd2_shapes_are_used_by_name(folder, name, width):
    components = wide_model(width)
    (text,), used = use_embeddings(components, [f"a photo of {name}, detailed"])
    embedding = read_embedding(list_embeddings()[name])
    assert [e.name for e in used] == [name] and embedding.token() in text
    ids = components.tokenizer(text, add_special_tokens=False).input_ids
    rows = components.text_encoder.get_input_embeddings().weight[[i for i in ids if i >= 49408]]
    assert torch.equal(rows, torch.from_numpy(embedding.first))  # each vector is its own token
    again, _ = use_embeddings(components, [f"{name}"])  # idempotent: no second copy of the tokens
    assert len(components.tokenizer) == 49408 + embedding.first.shape[0]


def test_a_width_mismatch_names_what_it_is_for(folder):
    with pytest.raises(BadRequest, match=r"sd2emb is 1024 wide, for sd2; clip-768's text encoder is 768 wide"):
        use_embeddings(wide_model(768), ["sd2emb"])


def test_used_in_a_picture_weighted_like_a_word_with_ti_hashes(folder, tmp_path):
    from reverie.outputs.metadata import read_png_info

    studio = Studio(device="cpu")
    plain = pixels(studio.generate("a inkcat", **FAST).images[0].image)
    other = pixels(studio.generate("a cat", **FAST).images[0].image)
    weighted = pixels(studio.generate("a (inkcat:1.4)", **FAST).images[0].image)
    assert np.abs(plain - other).max() > 0 and np.abs(plain - weighted).max() > 0
    made = studio.generate("a Bad-Hands cat", **FAST, outdir=tmp_path).images[0]
    text = read_png_info(made.path)["parameters"]
    assert f"TI hashes: \"Bad-Hands: {read_embedding(folder / 'Bad-Hands.safetensors').hash}\"" in text
    # a prompt without an embedding is what the model drew before any was added
    assert np.array_equal(other, pixels(Studio(device="cpu").generate("a cat", **FAST).images[0].image))


def test_mini_embeddings_are_384_wide(folder):
    minilm = pytest.importorskip("reverie.models.minilm")
    try:
        tokenizer, encoder = minilm.load_minilm()
    except Exception as exc:  # the MiniLM package is not installed here
        pytest.skip(f"MiniLM unavailable: {exc}")
    save_file({"emb_params": torch.randn(2, 384)}, str(folder / "minicat.safetensors"))
    tiny = build_tiny()
    mini = ModelComponents("mini", tiny.unet, tiny.vae, encoder, tokenizer, dict(SD_SCHEDULE), family="mini")
    (text,), used = use_embeddings(mini, ["a minicat emoji"])
    states = encode_prompt(text, mini.tokenizer, mini.text_encoder)
    plain = encode_prompt("a cat emoji", mini.tokenizer, mini.text_encoder)
    assert states.shape[-1] == 384 and not torch.equal(states, plain)
    with pytest.raises(BadRequest, match="768 wide, for sd1"):
        use_embeddings(mini, ["sd1emb"])
