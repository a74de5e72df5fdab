"""LoRA files in prompts: kohya/A1111, diffusers/PEFT and LyCORIS LoCon layouts, written here from the
tiny-random model's own module names (the real key layouts), applied through diffusers' loader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import pixels, run_cli
from reverie.errors import BadRequest, ModelNotFound
from reverie.models.lora import a1111_hash, find_lora, list_loras, lora_info
from reverie.models.tiny import build_tiny
from reverie.prompts.extra_networks import LoraUse, extract_loras
from reverie.studio import Studio

FAST = dict(model="tiny-random", steps=2, width=64, height=64, seed=3, n_samples=1)
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # what kohya trains on CLIP


def _linears(module, targets):
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and name.endswith(targets)]


def kohya_lora(seed: int, rank: int = 4, text: bool = True, convs: bool = False, cross: int | None = None) -> dict:
    """A kohya/A1111 LoRA for tiny-random: `lora_unet_<module_path_with_underscores>.lora_down/up/alpha`,
    `lora_te_text_model_...` for CLIP; `convs` adds LoCon's convolution layers (resnets)."""
    components = build_tiny()
    g = torch.Generator().manual_seed(seed)
    state = {}

    def add(prefix, name, down_shape, up_shape):
        key = prefix + name.replace(".", "_")
        state[key + ".lora_down.weight"] = torch.randn(down_shape, generator=g) * 0.3
        state[key + ".lora_up.weight"] = torch.randn(up_shape, generator=g) * 0.3
        state[key + ".alpha"] = torch.tensor(float(rank) / 2)

    for name, m in _linears(components.unet, UNET_TARGETS):
        width = cross if (cross and name.endswith(("attn2.to_k", "attn2.to_v"))) else m.in_features
        add("lora_unet_", name, (rank, width), (m.out_features, rank))
    if convs:
        for name, m in components.unet.named_modules():
            if isinstance(m, torch.nn.Conv2d) and ".resnets." in name and name.endswith(("conv1", "conv2")):
                add("lora_unet_", name, (rank, m.in_channels, 3, 3), (m.out_channels, rank, 1, 1))
    if text:
        for name, m in _linears(components.text_encoder, TEXT_TARGETS):
            add("lora_te_text_model_", name, (rank, m.in_features), (m.out_features, rank))
    return state


def peft_lora(seed: int, rank: int = 4) -> dict:
    """The diffusers/PEFT layout: `unet.<module>.lora_A/B.weight`, `text_encoder.text_model.<module>...`."""
    components = build_tiny()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, module, targets in (("unet.", components.unet, UNET_TARGETS),
                                    ("text_encoder.text_model.", components.text_encoder, TEXT_TARGETS)):
        for name, m in _linears(module, targets):
            state[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.3
            state[f"{prefix}{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.3
    return state


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "Lora").mkdir(parents=True)
    monkeypatch.setenv("REVERIE_MODELS", str(root))
    save_file(kohya_lora(1), str(root / "Lora" / "inkA.safetensors"))
    save_file(kohya_lora(2, text=False), str(root / "Lora" / "inkB.safetensors"))
    save_file(peft_lora(3), str(root / "Lora" / "peftC.safetensors"))
    save_file(kohya_lora(4, convs=True), str(root / "Lora" / "loconD.safetensors"))
    save_file(kohya_lora(5, text=False, cross=1024), str(root / "Lora" / "forSD2.safetensors"))
    save_file(kohya_lora(6), str(root / "directly.safetensors"))  # a LoRA straight in models/
    return root


def picture(studio, prompt, tmp_path=None, **more):
    result = studio.generate(prompt, **(FAST | more), outdir=tmp_path)
    return result.images[0]


# ----------------------------------------------------------------------------- syntax

def test_extract_loras_reads_a1111_tags():
    text, uses = extract_loras("a cat <lora:inkA:0.8>, <lora:inkB:0.5:0.2> and <lyco:x>")
    assert text == "a cat ,  and "  # the tags removed, nothing else touched (as A1111)
    assert uses == [LoraUse("inkA", 0.8, 0.8), LoraUse("inkB", 0.5, 0.2), LoraUse("x", 1.0, 1.0)]
    assert extract_loras("an <my-cat> emoji") == ("an <my-cat> emoji", [])


@pytest.mark.parametrize("prompt, expected", [
    ("a <lora:inkA:0.8", "not closed"),
    ("a <lora::0.8>", "no LoRA name"),
    ("a <lora:inkA:heavy>", "not a weight"),
    ("<lora:inkA:1> b <lora:inkA:0.5>", "given twice"),
    ("<lora:inkA:1:2:3>", "3 weights"),
])
def test_bad_tags_are_refused_naming_the_prompt(prompt, expected):
    with pytest.raises(BadRequest, match=expected) as caught:
        extract_loras(prompt)
    assert caught.value.field == "prompt"


# ----------------------------------------------------------------------------- files

def test_finds_formats_bases_and_a1111_hash(models):
    assert set(list_loras()) == {"inkA", "inkB", "peftC", "loconD", "forSD2", "directly"}
    info = lora_info(find_lora("inkA"))
    assert (info.format, info.base, info.has_text) == ("kohya", "a model attending to 32-wide text states", True)
    assert lora_info(find_lora("peftC")).format == "peft"
    assert lora_info(find_lora("loconD")).format == "lycoris-locon"
    assert lora_info(find_lora("forSD2")).base == "sd2"
    # A1111's rule for a .safetensors LoRA: sha256 of the bytes after the header, 12 hex digits.
    import hashlib
    data = (models / "Lora" / "inkA.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert info.hash == a1111_hash(info.path) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]


def test_unknown_name_lists_the_known_ones(models):
    studio = Studio(device="cpu")
    with pytest.raises(ModelNotFound, match=r"no LoRA named 'nope'.*inkA.*peftC"):
        picture(studio, "a cat <lora:nope:1>")
    with pytest.raises(ModelNotFound, match="no LoRA named"):
        find_lora("../Lora/inkA")  # names only, never paths


def test_models_listing_and_registry(models, monkeypatch, capsys):
    from reverie.models.registry import list_models

    assert "directly" not in [entry.name for entry in list_models()]  # not offered as a model
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0
    assert "inkA" in out and " lora " in out and "directly" in out
    # A LoRA named like an emoji shortcode is printed as its tag, not as the emoji.
    save_file(kohya_lora(9), str(Path(os.environ["REVERIE_MODELS"]) / "Lora" / "rainbow.safetensors"))
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert "<lora:rainbow:" in out and "\U0001f308" not in out


# ----------------------------------------------------------------------------- applying

def test_weight_zero_is_the_base_bit_for_bit_and_weight_one_changes_it(models, tmp_path):
    studio = Studio(device="cpu")
    base = pixels(picture(studio, "a red apple").image)
    for name in ("inkA", "peftC", "loconD", "directly"):
        changed = pixels(picture(studio, f"a red apple <lora:{name}:1>").image)
        assert np.abs(changed - base).max() > 0, name
        zero = pixels(picture(studio, f"a red apple <lora:{name}:0>").image)
        assert np.array_equal(zero, base), name
    # after every request the cached model is the base again
    assert np.array_equal(pixels(picture(studio, "a red apple").image), base)
    fresh = pixels(picture(Studio(device="cpu"), "a red apple").image)
    assert np.array_equal(fresh, base)


def test_text_encoder_weight_is_separate(models):
    studio = Studio(device="cpu")
    unet_only = pixels(picture(studio, "a red apple <lora:inkA:1:0>").image)
    both = pixels(picture(studio, "a red apple <lora:inkA:1:1>").image)
    assert np.abs(unet_only - both).max() > 0


def test_stacking_is_the_same_in_either_order(models):
    studio = Studio(device="cpu")
    ab = pixels(picture(studio, "a cat <lora:inkA:0.7> <lora:inkB:0.4>", dtype="fp32").image)
    ba = pixels(picture(studio, "a cat <lora:inkB:0.4> <lora:inkA:0.7>", dtype="fp32").image)
    a = pixels(picture(studio, "a cat <lora:inkA:0.7>", dtype="fp32").image)
    assert np.abs(ab - ba).max() <= 1  # fp32 sums in another order: at most one level (bf16 rounds coarser)
    assert np.abs(ab - a).max() > 0


def test_other_weights_do_not_reload_the_base(models):
    studio = Studio(device="cpu")
    picture(studio, "a cat <lora:inkA:0.3>")
    loads = studio.models.loads
    key = next(key for key in studio.models._entries if key[0] == "diffusion")
    components = studio.models._entries[key][0]
    first = pixels(picture(studio, "a cat <lora:inkA:0.9>").image)
    assert studio.models.loads == loads
    assert studio.models._entries[key][0] is components
    assert "inkA_" + lora_info(find_lora("inkA")).hash in components.unet.peft_config
    # the same request again is the same picture: weights are set, not accumulated
    assert np.array_equal(first, pixels(picture(studio, "a cat <lora:inkA:0.9>").image))


def test_a_lora_for_another_base_is_refused_saying_what_it_is_for(models):
    studio = Studio(device="cpu")
    with pytest.raises(BadRequest, match=r"forSD2> is a LoRA for sd2 .*1024-wide.*attends to 32-wide"):
        picture(studio, "a cat <lora:forSD2:1>")
    base = pixels(picture(studio, "a cat").image)
    assert np.array_equal(base, pixels(picture(Studio(device="cpu"), "a cat").image))


def test_loha_is_refused_as_diffusers_does_not_load_it(models):
    components = build_tiny()
    name, m = _linears(components.unet, ("attn2.to_k",))[0]
    key = "lora_unet_" + name.replace(".", "_")
    save_file({key + ".hada_w1_a": torch.randn(m.out_features, 4), key + ".hada_w1_b": torch.randn(4, m.in_features),
               key + ".hada_w2_a": torch.randn(m.out_features, 4), key + ".hada_w2_b": torch.randn(4, m.in_features),
               key + ".alpha": torch.tensor(4.0)}, str(models / "Lora" / "loha.safetensors"))
    assert lora_info(find_lora("loha")).format == "lycoris-loha"
    with pytest.raises(BadRequest, match="LyCORIS loha"):
        picture(Studio(device="cpu"), "a cat <lora:loha:1>")


def test_a_tag_from_a_wildcard_variant_applies(models):
    studio = Studio(device="cpu")
    via_template = pixels(picture(studio, "a cat {<lora:inkA:1>|<lora:inkA:1>}").image)
    direct = pixels(picture(studio, "a cat <lora:inkA:1>").image)
    assert np.array_equal(via_template, direct)


def test_metadata_has_lora_hashes_and_from_reapplies(models, tmp_path, monkeypatch, capsys):
    from reverie.outputs.metadata import parse_a1111_parameters, read_png_info

    studio = Studio(device="cpu")
    made = picture(studio, "a cat <lora:inkA:0.8> <lora:inkB:0.5>", tmp_path / "out")
    text = read_png_info(made.path)["parameters"]
    hashes = f"inkA: {lora_info(find_lora('inkA')).hash}, inkB: {lora_info(find_lora('inkB')).hash}"
    assert f'Lora hashes: "{hashes}"' in text
    assert text.startswith("a cat <lora:inkA:0.8> <lora:inkB:0.5>")  # the prompt keeps its tags
    assert parse_a1111_parameters(text)["prompt"] == "a cat <lora:inkA:0.8> <lora:inkB:0.5>"
    assert [lora["name"] for lora in made.metadata["loras"]] == ["inkA", "inkB"]
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--from", str(made.path), "--outdir", str(tmp_path / "again"))
    assert code == 0, err
    again = next((tmp_path / "again").rglob("*.png"))
    assert np.array_equal(pixels(made.image), pixels(__import__("PIL.Image").Image.open(again)))


def test_a1111_api_lists_loras(models, tmp_path):
    from test_server_api import make_client

    with make_client(tmp_path) as client:  # the caller's list: the shared LoRAs and their own
        rows = {row["name"]: row for row in client.get("/sdapi/v1/loras").json()}
    assert rows["inkA"]["path"] == "inkA.safetensors"  # a name, never the server's folders
    assert rows["forSD2"]["metadata"]["base"] == "sd2"


def test_single_file_refusal_says_how_to_use_a_lora(models):
    from reverie.errors import BadCheckpoint
    from reverie.models.registry import load_model

    with pytest.raises(BadCheckpoint, match=r"use it in the prompt as <lora:NAME:1>"):
        load_model(str(models / "directly.safetensors"))


def test_a_lora_with_weights_kept_in_16_bits_is_refused_naming_the_option(models):
    from reverie.errors import BadRequest

    with pytest.raises(BadRequest, match="--weights"):
        picture(Studio(device="cpu"), "a red apple <lora:inkA:1>", weights="fp16")
