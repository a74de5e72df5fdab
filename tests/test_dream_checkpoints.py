"""Generator and guide checkpoints in their public formats, built with random weights.

The files follow the original projects' module trees (tests/checkpoint_layouts.py) and are
saved the way those projects saved them; reverie must load them strictly and safely. Tests of a
layout build it narrow (every key name, a fraction of the widths); only the test that a plain
state dict's architecture is inferred needs a full-size model.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from checkpoint_layouts import (
    IMAGENET_F16, IMAGENET_F16_NARROW, OPENAI_CLIPS, SMALL_CLIP, VIT_B_32_NARROW, openai_clip_config,
    openai_clip_model, taming_vqgan_shapes, write_biggan, write_openai_clip, write_taming_vqgan,
)
from reverie.errors import BadCheckpoint, BadRequest, ModelNotFound
from reverie.models.biggan import load_biggan
from reverie.models.clip_architecture import openai_architecture, shapes_of_state_dict
from reverie.models.clip_files import load_clip_file, split_reference
from reverie.models.taming_vqgan import load_vqgan

SMALL_VQGAN = dict(IMAGENET_F16, ch=32, ch_mult=[1, 2, 2], z_channels=8, resolution=32, attn_resolutions=[8])


def test_small_vqgan_round_trips_a_picture_through_its_codebook(tmp_path):
    model = load_vqgan(write_taming_vqgan(tmp_path, SMALL_VQGAN, n_embed=16, embed_dim=4))
    latents = model.encode(torch.rand(1, 3, 32, 32) * 2 - 1).latents
    assert latents.shape == (1, 4, 8, 8)
    assert model.decode(latents).sample.shape == (1, 3, 32, 32)
    # The taming codebook reached diffusers' quantizer unchanged.
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])
    assert torch.equal(model.encoder.down_blocks[2].attentions[1].to_q.weight, state["encoder.down.2.attn.1.q.weight"][:, :, 0, 0])
    assert torch.equal(model.decoder.up_blocks[0].resnets[2].conv1.weight, state["decoder.up.2.block.2.conv1.weight"])


def test_imagenet_f16_vqgan_layout_loads_strictly(tmp_path):
    shapes = taming_vqgan_shapes(IMAGENET_F16_NARROW, 1024, 256)
    assert shapes.keys() == taming_vqgan_shapes(IMAGENET_F16, 1024, 256).keys()  # the real file's key names
    model = load_vqgan(write_taming_vqgan(tmp_path, IMAGENET_F16_NARROW, n_embed=1024, embed_dim=256))
    # Every taming weight landed somewhere: same number of values on both sides.
    assert sum(p.numel() for p in model.parameters()) == sum(torch.Size(s).numel() for s in shapes.values())
    assert model.config.num_vq_embeddings == 1024 and model.config.vq_embed_dim == 256
    # Five levels, attention only in the last (16 px) one, as in the ImageNet f16 models.
    assert list(model.config.down_block_types) == ["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"]


def test_vqgan_with_a_missing_weight_is_refused_by_name(tmp_path):
    checkpoint = write_taming_vqgan(tmp_path, SMALL_VQGAN, 16, 4)
    saved = torch.load(checkpoint, weights_only=True)
    del saved["state_dict"]["decoder.up.2.attn.0.q.weight"]
    torch.save(saved, checkpoint)
    with pytest.raises(BadCheckpoint, match="missing: decoder.up_blocks.0.attentions.0.to_q.weight"):
        load_vqgan(checkpoint)


def test_vqgan_needs_its_yaml_and_refuses_gumbel_models(tmp_path):
    checkpoint = write_taming_vqgan(tmp_path, SMALL_VQGAN, 16, 4)
    config = checkpoint.with_suffix(".yaml")
    text = config.read_text()
    config.write_text(text.replace("taming.models.vqgan.VQModel", "taming.models.vqgan.GumbelVQ"))
    with pytest.raises(BadCheckpoint, match="GumbelVQ"):
        load_vqgan(checkpoint)
    config.unlink()
    with pytest.raises(ModelNotFound, match="last.yaml"):
        load_vqgan(checkpoint)


def test_biggan_folder_loads_strictly_and_draws(tmp_path):
    model = load_biggan(write_biggan(tmp_path, output_dim=128, channel_width=16))
    picture = model(torch.zeros(1, 128), torch.softmax(torch.randn(1, 1000), -1), 1.0)
    assert picture.shape == (1, 3, 128, 128)


def test_biggan_deep_256_layout_loads_strictly(tmp_path):
    # biggan-deep-256's twelve blocks and attention at a channel width of 16 (the published one: 128).
    folder = write_biggan(tmp_path, output_dim=256, channel_width=16)
    model = load_biggan(folder)
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert set(model.state_dict()) == set(saved)
    assert "generator.layers.12.conv_3.weight_orig" in saved  # 12 blocks + attention: the 256 px depth
    assert model.generator.gen_z.weight_orig.shape == (4 * 4 * 16 * 16, 256)  # z and class embedding, 128 each


def test_biggan_with_a_wrong_config_or_damaged_file_is_refused(tmp_path):
    folder = write_biggan(tmp_path, output_dim=128, channel_width=16)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"channel_width": 32}))
    with pytest.raises(BadCheckpoint, match="does not match config.json"):
        load_biggan(folder)
    (folder / "config.json").write_text(json.dumps(config))
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadCheckpoint):
        load_biggan(folder)


def test_openai_clip_archive_is_read_without_running_it(tmp_path):
    original = openai_clip_model()
    path = write_openai_clip(tmp_path / "ViT-tiny.pt", original, half=False)
    loaded = load_clip_file(str(path))
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded.model.encode_image(images), original.encode_image(images), atol=1e-5)
    tokens = loaded.tokenizer(["a cat"])
    assert torch.allclose(loaded.model.encode_text(tokens), original.encode_text(tokens), atol=1e-5)
    assert loaded.image_size == 32


def test_openai_vit_b_32_layout_loads_strictly(tmp_path):
    model = openai_clip_model(VIT_B_32_NARROW)
    full = openai_clip_model(openai_clip_config("ViT-B-32"), device="meta")  # shapes only, no weights
    assert set(model.state_dict()) == set(full.state_dict())
    loaded = load_clip_file(str(write_openai_clip(tmp_path / "ViT-B-32.pt", model)))
    assert loaded.image_size == 224
    assert set(loaded.model.state_dict()) == set(model.state_dict())
    weight = model.visual.transformer.resblocks[11].mlp.c_fc.weight
    assert torch.equal(loaded.model.visual.transformer.resblocks[11].mlp.c_fc.weight, weight.half().float())


@pytest.mark.parametrize("name", list(OPENAI_CLIPS))
def test_the_openai_architecture_is_read_from_the_shapes(name):
    # The model's own state dict (built on the meta device: its keys and shapes, no weights).
    state = openai_clip_model(openai_clip_config(name), device="meta").state_dict()
    assert openai_architecture(shapes_of_state_dict(state)) == f"{name}-quickgelu"


def test_a_plain_openai_state_dict_is_loaded_as_its_architecture(tmp_path, caplog):
    """The one full-size model here: only OpenAI's real shapes name an OpenAI architecture."""
    from open_clip.transformer import QuickGELU

    saved = {k: v.half() for k, v in openai_clip_model(openai_clip_config("ViT-B-32")).state_dict().items()}
    torch.save(saved, tmp_path / "clip.pt")  # as OpenAI's weights are: fp16, OpenAI's key names
    caplog.set_level(logging.INFO)
    root_filters = list(logging.getLogger().filters)
    loaded = load_clip_file(str(tmp_path / "clip.pt"))
    assert loaded.name == "ViT-B-32-quickgelu:clip" and loaded.image_size == 224
    assert isinstance(loaded.model.transformer.resblocks[0].mlp.gelu, QuickGELU)  # OpenAI trained with it
    weights = loaded.model.state_dict()  # loaded strictly; each weight where the file had it:
    for key in ("visual.conv1.weight", "visual.transformer.resblocks.11.mlp.c_fc.weight", "visual.proj",
                "token_embedding.weight", "transformer.resblocks.11.attn.in_proj_weight", "text_projection"):
        assert torch.equal(weights[key], saved[key].float()), key
    # open_clip's "initialized randomly" is not said of weights reverie loads; its other lines
    # still come through, and the silencing ends with the load.
    assert "initialized randomly" not in caplog.text and "ViT-B-32-quickgelu" in caplog.text
    assert logging.getLogger().filters == root_filters


def test_a_name_before_the_path_is_the_architecture(tmp_path):
    # A name given is what load_clip_file builds; only without one does it read the shapes
    # (LAION's ViT-B/32 has OpenAI's shapes but GELU: `ViT-B-32:file`).
    assert split_reference(f"ViT-B-32:{tmp_path}/clip.pt") == ("ViT-B-32", tmp_path / "clip.pt")
    assert split_reference(f"{tmp_path}/clip.pt") == (None, tmp_path / "clip.pt")
    assert split_reference("notes:clip.pt") == (None, Path("notes:clip.pt"))  # not an open_clip name: a path


@pytest.mark.parametrize("config, shapes", [
    (SMALL_CLIP, "ViT with 2 layers of width 128, 8 px patches, 32 px pictures"),
    (dict(SMALL_CLIP, vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=8)),
     "ResNet with blocks 1-1-1-1, width 8, 64 px pictures"),
])
def test_a_plain_state_dict_of_no_openai_model_needs_its_architecture_named(tmp_path, config, shapes):
    torch.save(openai_clip_model(config).state_dict(), tmp_path / "clip.pt")
    with pytest.raises(BadRequest, match="clip: clip.pt has OpenAI CLIP's layout") as error:
        load_clip_file(str(tmp_path / "clip.pt"))
    assert shapes in str(error.value) and f"ViT-B-32-quickgelu:{tmp_path / 'clip.pt'}" in str(error.value)


def test_a_plain_state_dict_in_another_layout_needs_its_architecture_named(tmp_path):
    from open_clip.model import CustomTextCLIP

    torch.save(CustomTextCLIP(**SMALL_CLIP).state_dict(), tmp_path / "clip.pt")  # `text.transformer...`
    with pytest.raises(BadRequest, match=r"clip.pt is a plain weights file not in OpenAI CLIP's layout; .*ViT-B-32:"):
        load_clip_file(str(tmp_path / "clip.pt"))
    # An OpenAI layout with a part missing is not read as one either.
    rn50 = openai_clip_model(openai_clip_config("RN50"), device="meta").state_dict()
    assert shapes_of_state_dict({k: v for k, v in rn50.items() if not k.startswith("visual.layer1.0.")}) is None


def test_a_torchscript_archive_with_foreign_globals_is_refused(tmp_path):
    path = write_openai_clip(tmp_path / "model.pt", openai_clip_model())
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("ran code from the checkpoint",))

    with zipfile.ZipFile(path) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Payload(), protocol=2)
            target.writestr(item, data)
    with pytest.raises(BadCheckpoint, match="refusing __builtin__.print"):
        load_clip_file(str(evil))


def test_open_clip_checkpoint_with_its_config_folder(tmp_path, caplog):
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CustomTextCLIP(**SMALL_CLIP).eval()  # open_clip's own layout (`text.transformer...`)
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": SMALL_CLIP | {"custom_text": True}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    caplog.set_level(logging.INFO)
    loaded = load_clip_file(str(folder))
    assert "initialized randomly" not in caplog.text  # reverie loaded the weights itself
    images = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded.model.encode_image(images), model.encode_image(images), atol=1e-5)
    tokens = loaded.tokenizer(["a red apple"])
    assert torch.allclose(loaded.model.encode_text(tokens), model.encode_text(tokens), atol=1e-5)
