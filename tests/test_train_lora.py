"""Training a LoRA and an embedding on a folder of pictures (tiny-random: a few steps each)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from reverie.errors import BadRequest
from reverie.training.loop import TrainConfig


@pytest.fixture
def concept(tmp_path):
    """Ten random pictures, some wide, some tall, two with captions."""
    folder = tmp_path / "concept"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        width, height = [(96, 48), (48, 96), (64, 64)][i % 3]
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "p0.txt").write_text("a red thing, on grass\n")
    (folder / "p1.txt").write_text("a blue thing\n")
    return folder


def config(steps, **kw):
    return TrainConfig(**{"steps": steps, "batch_size": 2, "lr": 1e-2, "warmup": 1, "save_every": 2, "sample_every": 0,
                          "device": "cpu", **kw})


def lora(concept, out, steps, **settings):
    from reverie.training.lora import LoraSettings, train_lora

    fields = {"trigger": "sks", "rank": 4, "alpha": 2.0, "half": False, **settings}
    return train_lora(concept, "tiny-random", out, config(steps), LoraSettings(**fields), quiet=True)


def test_a_lora_run_resumes_bit_for_bit(concept, tmp_path):
    straight = lora(concept, tmp_path / "straight", 4, text_encoder=True)
    lora(concept, tmp_path / "resumed", 2, text_encoder=True)
    resumed = lora(concept, tmp_path / "resumed", 4, text_encoder=True)
    for name in ("lora.safetensors",):
        a = load_file(tmp_path / "straight" / "checkpoint" / name)
        b = load_file(tmp_path / "resumed" / "checkpoint" / name)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert all("lora_" in k for k in a)  # the checkpoint holds the adapters, not the frozen base
    a, b = load_file(straight.file), load_file(resumed.file)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["name"] == "lora"


def test_the_exported_lora_is_kohyas_and_diffusers_loads_it_back(concept, tmp_path):
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    from reverie.models.tiny import SD_SCHEDULE, build_tiny
    from reverie.training.lora_file import tensor_data_hash

    run = lora(concept, tmp_path / "run", 3, text_encoder=True, prior_preservation=True, class_prompt="a cat",
               class_images=2, name="my-thing")
    assert run.file == tmp_path / "run" / "my-thing.safetensors"
    assert len(list((tmp_path / "run" / "class_images").glob("*.png"))) == 2
    tensors = load_file(run.file)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in tensors
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert all(k.startswith(("lora_unet_", "lora_te_")) and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in tensors)
    assert tensors["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"].shape[0] == 4
    assert all(float(v) == 2.0 for k, v in tensors.items() if k.endswith(".alpha"))
    with safe_open(run.file, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.architecture"].endswith("/lora")
    assert meta["ss_base_model_version"] and meta["ss_num_train_images"] == "10"
    assert meta["sshs_model_hash"] == tensor_data_hash(run.file.read_bytes())

    # The trained model with its adapters merged into the weights ...
    for network in run.networks.values():
        for module in network.modules():
            if isinstance(module, LoraLayer):
                module.merge()
    # ... is what diffusers' own kohya loader makes of the file on a fresh base.
    base = build_tiny()
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=DDPMScheduler.from_config(SD_SCHEDULE),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(run.file))
    pipe.fuse_lora()
    for name, trained, loaded in (("unet", run.networks["unet"], pipe.unet),
                                  ("text_encoder", run.networks["text_encoder"], pipe.text_encoder)):
        a = {k: v for k, v in trained.state_dict().items() if "lora_" not in k}
        b = {k: v for k, v in loaded.state_dict().items() if "lora_" not in k}
        assert set(a) == set(b), name
        changed = [k for k in a if "base_layer" in k]
        assert changed, name
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), [k for k in a if not torch.allclose(a[k], b[k], atol=1e-5)]
        # and the LoRA did change them
        fresh = dict(build_tiny().unet.state_dict() if name == "unet" else build_tiny().text_encoder.state_dict())
        assert any(not torch.equal(a[k], fresh[k.replace("base_layer.", "")]) for k in changed)


def test_fewer_than_ten_pictures_are_refused(concept):
    from reverie.training.data.concept import read_concept

    (concept / "p9.png").unlink()
    with pytest.raises(BadRequest, match=r"holds 9 picture\(s\).*at least 10") as caught:
        read_concept(concept, "sks", 64, 32)
    assert str(concept) in str(caught.value)


def test_buckets_part_wide_and_tall_pictures(concept):
    from reverie.training.data.concept import bucket_sizes, read_concept

    sizes = bucket_sizes(128, 32)
    assert all(w % 32 == 0 and h % 32 == 0 and w * h <= 128 * 128 for w, h in sizes) and (128, 128) in sizes
    read = read_concept(concept, "sks", 64, 32, class_prompt="a cat")
    where = {path.name: bucket.size for bucket in read.buckets for path in bucket.paths}
    assert where["p0.png"][0] > where["p0.png"][1]  # wide
    assert where["p1.png"][0] < where["p1.png"][1]  # tall
    assert where["p2.png"][0] == where["p2.png"][1]
    captions = {path.name: lines for bucket in read.buckets for path, lines in zip(bucket.paths, bucket.captions)}
    assert captions["p0.png"] == ["sks, a red thing, on grass"] and captions["p2.png"] == ["sks a cat"]
    square = read_concept(concept, "sks", 64, 32, buckets=False)
    assert [b.size for b in square.buckets] == [(64, 64)]
    assert read_concept(concept, "sks", 64, 32).buckets[0].captions[0] != []


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_an_embedding_trains_only_its_rows_and_loads_back(concept, tmp_path, fmt):
    from reverie.training.embedding import EmbeddingSettings, train_embedding

    from reverie.models.tiny import build_tiny

    settings = EmbeddingSettings(token="<my-thing>", init_word="cat", vectors=2, fmt=fmt)
    run = train_embedding(concept, "tiny-random", tmp_path / "run", config(3, lr=5e-2), settings, quiet=True)
    fresh = build_tiny()
    assert all(torch.equal(v, fresh.text_encoder.state_dict()[k]) for k, v in run.components.text_encoder.state_dict().items())
    assert all(torch.equal(v, fresh.unet.state_dict()[k]) for k, v in run.components.unet.state_dict().items())
    start = fresh.text_encoder.get_input_embeddings().weight[fresh.tokenizer("cat", add_special_tokens=False)["input_ids"][0]]
    assert run.vectors.shape == (2, 32) and not torch.equal(run.vectors[0], start)
    assert run.file == tmp_path / "run" / f"my-thing.{fmt}"
    if fmt == "safetensors":
        assert torch.equal(load_file(run.file)["emb_params"], run.vectors)
    else:
        data = torch.load(run.file, weights_only=True)
        assert torch.equal(data["string_to_param"]["*"], run.vectors)
        assert data["name"] == "my-thing" and data["step"] == 3 and "sd_checkpoint_name" in data


def test_settings_a_user_gets_wrong_say_what_to_change(concept, tmp_path):
    from reverie.training.lora import LoraSettings, train_lora

    with pytest.raises(BadRequest, match="not CLIP: its LoRAs are UNet-only"):  # reverie-mini's text encoder is MiniLM
        train_lora(concept, "mini", tmp_path / "mini", config(1), LoraSettings(trigger="sks", text_encoder=True), quiet=True)

    with pytest.raises(BadRequest, match="class_prompt"):
        LoraSettings(trigger="sks", prior_preservation=True).check()
    with pytest.raises(BadRequest, match="trigger"):
        LoraSettings(trigger=" ").check()


def test_the_cli_refuses_a_small_folder_by_name_and_count(concept, tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    for picture in list(concept.glob("*.png"))[:3]:
        picture.unlink()
    code, _, err = run_cli(monkeypatch, capsys, "train", "lora", str(concept), "--model", "tiny-random",
                           "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code != 0 and str(concept) in " ".join(err.split()) and "7 picture(s)" in err


# ----------------------------------------------------------------------------- SDXL

from test_sdxl import FAST, sdxl_files, sdxl_models, tiny_sdxl  # noqa: E402,F401  (fixtures and the toy model)


def sdxl_lora(concept, out, steps, **settings):
    from reverie.training.lora import LoraSettings, train_lora

    fields = {"trigger": "sks", "rank": 4, "alpha": 2.0, "half": False, **settings}
    return train_lora(concept, "tiny-sdxl", out, config(steps), LoraSettings(**fields), quiet=True)


def test_an_sdxl_lora_is_conditioned_as_generation_is(sdxl_models):
    """The UNet gets both encoders' penultimate states, bigG's pooled text and the bucket's size."""
    from reverie.prompts.conditioning import encode_sdxl_prompt_batch
    from reverie.training.personal import Captions, load_base

    components = load_base("tiny-sdxl")
    latents = torch.zeros(2, 4, 4, 8)  # a 64x32 bucket
    kwargs = Captions(components)(["sks, a red thing", "sks"], latents)
    encoders = [(components.tokenizer, components.text_encoder), (components.tokenizer_2, components.text_encoder_2)]
    expected = encode_sdxl_prompt_batch([("sks, a red thing", ""), ("sks", "")], encoders)
    assert torch.equal(kwargs["encoder_hidden_states"], expected.cond)
    assert torch.equal(kwargs["added_cond_kwargs"]["text_embeds"], expected.pooled)
    assert kwargs["added_cond_kwargs"]["time_ids"].tolist() == [[32, 64, 0, 0, 32, 64]] * 2


def test_an_sdxl_lora_trains_resumes_and_is_kohyas(sdxl_models, concept, tmp_path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from peft.tuners.lora import LoraLayer

    straight = sdxl_lora(concept, tmp_path / "straight", 4, text_encoder=True, name="xl-thing")
    sdxl_lora(concept, tmp_path / "resumed", 2, text_encoder=True, name="xl-thing")
    resumed = sdxl_lora(concept, tmp_path / "resumed", 4, text_encoder=True, name="xl-thing")
    a, b = load_file(straight.file), load_file(resumed.file)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    # kohya's sdxl_train_network names: the UNet in the original (SGM) layout, lora_te1_ / lora_te2_.
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in a
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k.lora_up.weight" in a
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0.alpha" in a
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in a
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight" in a
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                             "lora_te1_", "lora_te2_")) for k in a)
    assert all(float(v) == 2.0 for k, v in a.items() if k.endswith(".alpha"))
    with safe_open(straight.file, "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_network_train_unet_only"] == "False" and meta["modelspec.resolution"] == "64x64"

    # diffusers' own kohya loader on a fresh base gives the trained model's merged weights.
    for network in straight.networks.values():
        for module in network.modules():
            if isinstance(module, LoraLayer):
                module.merge()
    base = tiny_sdxl()
    pipe = StableDiffusionXLPipeline(vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
                                     tokenizer=base.tokenizer, tokenizer_2=base.tokenizer_2, unet=base.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(base.scheduler_config))
    pipe.load_lora_weights(str(straight.file))
    pipe.fuse_lora()
    fresh = tiny_sdxl()
    for name in ("unet", "text_encoder", "text_encoder_2"):
        trained = {k: v for k, v in straight.networks[name].state_dict().items() if "lora_" not in k}
        loaded = {k: v for k, v in getattr(pipe, name).state_dict().items() if "lora_" not in k}
        assert set(trained) == set(loaded), name
        assert all(torch.allclose(trained[k], loaded[k], atol=1e-5) for k in trained), name
        changed = [k for k in trained if "base_layer" in k]
        original = getattr(fresh, name).state_dict()
        assert changed and any(not torch.equal(trained[k], original[k.replace("base_layer.", "")]) for k in changed), name


def test_a_trained_sdxl_lora_is_used_by_name(sdxl_models, concept, tmp_path, studio):
    import shutil

    from conftest import pixels
    from reverie.models.lora import find_lora, lora_info
    from reverie.studio import make_request

    run = sdxl_lora(concept, tmp_path / "run", 2, name="xl-trained")
    (sdxl_models["models"] / "Lora").mkdir(exist_ok=True)
    shutil.copy(run.file, sdxl_models["models"] / "Lora" / "xl-trained.safetensors")
    assert lora_info(find_lora("xl-trained")).format == "kohya"

    def picture(prompt):
        return pixels(studio.generate(make_request(model="tiny-sdxl", prompt=prompt, seed=3, **FAST)).images[0].image)

    base = picture("sks, a lighthouse")
    assert np.array_equal(picture("sks, a lighthouse <lora:xl-trained:0>"), base)
    assert not np.array_equal(picture("sks, a lighthouse <lora:xl-trained:1>"), base)
    assert np.array_equal(picture("sks, a lighthouse"), base)


def test_an_sdxl_embedding_trains_its_rows_in_both_encoders_and_is_used_by_name(sdxl_models, concept, tmp_path,
                                                                                 studio):
    import shutil

    from reverie.models.embeddings import read_embedding, use_embeddings
    from reverie.prompts.conditioning import encode_sdxl_prompt_batch
    from reverie.studio import make_request
    from reverie.training.embedding import EmbeddingSettings, train_embedding

    with pytest.raises(BadRequest, match="safetensors"):
        train_embedding(concept, "tiny-sdxl", tmp_path / "pt", config(1),
                        EmbeddingSettings(token="<xl-thing>", fmt="pt"), quiet=True)
    settings = EmbeddingSettings(token="<xl-thing>", init_word="cat", vectors=2)
    run = train_embedding(concept, "tiny-sdxl", tmp_path / "run", config(3, lr=5e-2), settings, quiet=True)
    fresh = tiny_sdxl()
    for name in ("unet", "text_encoder", "text_encoder_2"):
        original = getattr(fresh, name).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in getattr(run.components, name).state_dict().items()), name
    tensors = load_file(run.file)
    assert set(tensors) == {"clip_l", "clip_g"}
    assert tensors["clip_l"].shape == (2, 32) and tensors["clip_g"].shape == (2, 64)
    for key, encoder in (("clip_l", fresh.text_encoder), ("clip_g", fresh.text_encoder_2)):
        start = encoder.get_input_embeddings().weight[fresh.tokenizer("cat", add_special_tokens=False)["input_ids"][0]]
        assert not torch.equal(tensors[key][0], start), key
    embedding = read_embedding(run.file)
    assert embedding.base == "sdxl"

    (sdxl_models["models"] / "embeddings").mkdir(exist_ok=True)
    shutil.copy(run.file, sdxl_models["models"] / "embeddings" / "xl-thing.safetensors")

    used = studio.generate(make_request(model="tiny-sdxl", prompt="a picture of xl-thing", seed=3, **FAST)).images[0]
    assert "TI hashes" in used.parameters and "xl-thing" in used.parameters
    # The name becomes the new tokens, whose input rows are the file's vectors in both encoders
    # (the toy model's pictures barely heed any text at 64 px, so the states are compared).
    model = tiny_sdxl()
    (text,), _ = use_embeddings(model, ["a picture of xl-thing"])
    encoders = [(model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)]
    for (tokenizer, encoder), key in zip(encoders, ("clip_l", "clip_g")):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-2:]
        assert torch.equal(encoder.get_input_embeddings().weight[ids], tensors[key]), key
    with_word = encode_sdxl_prompt_batch([(text, "")], encoders)
    without = encode_sdxl_prompt_batch([("a picture of", "")], encoders)
    assert not torch.equal(with_word.cond, without.cond) and not torch.equal(with_word.pooled, without.pooled)
