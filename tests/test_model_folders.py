"""Models in the diffusers folder layout, and the models folder that `--model NAME` searches."""

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
