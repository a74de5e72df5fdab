"""Models in the diffusers folder layout, and the models folder that `--model NAME` searches."""

import logging

import numpy as np
import pytest
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

from conftest import pixels
from reverie.errors import BadCheckpoint, ModelNotFound
from reverie.models.registry import list_models, load_model
from reverie.models.tiny import build_tiny
from reverie.studio import make_request


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    c = build_tiny()
    pipe = StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=EulerDiscreteScheduler.from_config(c.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-folder"
    pipe.save_pretrained(folder)
    return folder


def test_a_diffusers_folder_gives_the_same_pictures_as_the_model_it_was_saved_from(studio, tiny_folder):
    fields = dict(prompt="a red apple", steps=3, width=64, height=64, seed=11, n_samples=1, sampler="euler")
    from_folder = studio.generate(make_request(model=str(tiny_folder), **fields))
    built_in = studio.generate(make_request(model="tiny-random", **fields))
    assert np.array_equal(pixels(from_folder.images[0].image), pixels(built_in.images[0].image))
    assert from_folder.images[0].metadata["settings"]["model_name"] == "tiny-folder"


def test_models_folder_is_listed_and_searched_by_name(tiny_folder, monkeypatch):
    monkeypatch.setenv("REVERIE_MODELS", str(tiny_folder.parent))
    assert ("tiny-folder", "diffusers") in [(m.name, m.kind) for m in list_models()]
    assert load_model("tiny-folder").name == "tiny-folder"


def test_a_folder_without_model_index_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelNotFound, match="model_index.json"):
        load_model(str(tmp_path))


def test_a_folder_with_damaged_weights_is_refused(tiny_folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BadCheckpoint, match="could not load"):
        load_model(str(broken))


def test_a_16_bit_load_reads_each_part_straight_into_its_dtype_with_diffusers_own_weights(tiny_folder, tmp_path):
    """bf16 from an fp32 folder: every part built and filled tensor by tensor (no memory map of
    its file), the same tensors to the last bit as diffusers' own loader gives, quietly (no
    cast left for diffusers to warn about), and a part it cannot fill plainly (weights only as
    .bin) left to diffusers' loader."""
    import shutil

    import torch
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from reverie.models.diffusers_folder import _streamed_part, load_diffusers_folder

    index = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"]}
    for part, kind in index.items():
        assert _streamed_part(tiny_folder, part, kind, torch.bfloat16) is not None, part
    warned = []
    listener = logging.Handler()
    listener.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(listener)  # diffusers' loggers do not propagate to the root
    try:
        ours = load_diffusers_folder(tiny_folder, dtype=torch.bfloat16)
    finally:
        logging.getLogger("diffusers").removeHandler(listener)
    assert not [message for message in warned if "kept in float32" in message]
    theirs = DiffusionPipeline.from_pretrained(tiny_folder, dtype=torch.bfloat16, local_files_only=True,
                                               safety_checker=None, requires_safety_checker=False)
    for part in index:
        mine, reference = getattr(ours, part).state_dict(), getattr(theirs, part).state_dict()
        assert mine.keys() == reference.keys(), part
        for name, tensor in reference.items():
            assert mine[name].dtype == tensor.dtype and torch.equal(mine[name], tensor), f"{part}.{name}"

    bin_only = tmp_path / "bin-only"
    shutil.copytree(tiny_folder, bin_only)
    weights = bin_only / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
    weights.unlink()
    assert _streamed_part(bin_only, "unet", index["unet"], torch.bfloat16) is None
    unet = load_diffusers_folder(bin_only, dtype=torch.bfloat16).unet  # diffusers' loader, the same weights
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in ours.unet.state_dict().items())


def test_a_sharded_part_is_read_shard_by_shard_into_its_dtype(tiny_folder, tmp_path, monkeypatch):
    """A part saved in shards (diffusers and transformers shard past 10 GB: SDXL's fp32 UNet) is
    read shard by shard straight into a 16-bit dtype, as a one-file part is: the same tensors as
    from the one-file folder; an index naming a shard that is not there leaves the part to
    diffusers' loader, which says what is missing."""
    import shutil
    from pathlib import Path

    import torch
    from diffusers import UNet2DConditionModel

    from reverie.models import safetensors_stream
    from reverie.models.diffusers_folder import load_diffusers_folder

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_folder, sharded)
    shutil.rmtree(sharded / "unet")
    UNet2DConditionModel.from_pretrained(tiny_folder / "unet").save_pretrained(sharded / "unet", max_shard_size="200KB")
    shards = sorted(path.name for path in (sharded / "unet").glob("*.safetensors"))
    assert len(shards) > 2 and (sharded / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()

    read, real = [], safetensors_stream.read_narrowed
    monkeypatch.setattr(safetensors_stream, "read_narrowed", lambda path, dtype: read.append(Path(path).name)
                        or real(path, dtype))
    unet = load_diffusers_folder(sharded, dtype=torch.bfloat16).unet
    assert sorted(name for name in read if name.startswith("diffusion_pytorch_model-")) == shards
    reference = load_diffusers_folder(tiny_folder, dtype=torch.bfloat16).unet.state_dict()
    assert unet.state_dict().keys() == reference.keys()
    assert all(torch.equal(unet.state_dict()[name], tensor) for name, tensor in reference.items())

    (sharded / "unet" / shards[-1]).unlink()
    read.clear()
    with pytest.raises(BadCheckpoint, match="sharded"):
        load_diffusers_folder(sharded, dtype=torch.bfloat16)
    assert not [name for name in read if name.startswith("diffusion_pytorch_model-")]


def test_a_damaged_part_read_in_16_bits_names_the_folder_and_the_file(tiny_folder, tmp_path):
    import shutil

    import torch

    from reverie.models.diffusers_folder import load_diffusers_folder

    broken = tmp_path / "broken16"
    shutil.copytree(tiny_folder, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(BadCheckpoint, match=r"could not load the model folder .*broken16: vae/diffusion_pytorch_model"
                                            r"\.safetensors is damaged"):
        load_diffusers_folder(broken, dtype=torch.bfloat16)
