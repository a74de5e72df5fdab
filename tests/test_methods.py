"""The shape every way of making pictures shares: the registry, the request, the model cache,
progress with previews, `--from` exactly, and the Python API as diffusers users write it."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels
from reverie.errors import BadRequest, OutOfMemory
from reverie.methods import registry
from reverie.models.cache import ModelCache, module_bytes
from reverie.outputs.metadata import read_png_info
from reverie.samplers import SAMPLERS
from reverie.studio import Studio, make_request, modes, request_from_picture
from conftest import run_cli

FAST = dict(model="tiny-random", steps=3, cfg_scale=5.0, width=64, height=64)


# -- the registry ---------------------------------------------------------------------------------
def test_every_mode_is_served_by_one_method_and_unknown_modes_are_named():
    assert set(modes()) >= {"txt2img", "img2img", "variations", "inpaint", "outpaint", "upscale", "dream"}
    assert registry.method_for("dream").name == "dreaming" and registry.method_for("upscale").name == "upscale"
    with pytest.raises(BadRequest, match="mode: unknown mode 'sculpt'; use one of txt2img"):
        make_request(mode="sculpt", prompt="x")
    # each mode's request refuses the fields of another, by name
    with pytest.raises(BadRequest, match="iterations: unknown field"):
        make_request(mode="txt2img", prompt="x", iterations=3)


SOLID = '''
"""A toy method for the test: a picture of one colour per seed."""
from typing import Literal

from reverie.methods.registry import Method
from reverie.progress import ProgressEvent
from reverie.request import BaseRequest
from reverie.result import GeneratedImage, Result


class SolidRequest(BaseRequest):
    mode: Literal["solid"] = "solid"
    colour: str = "red"


def run(request, models, progress, outputs):
    from PIL import Image

    request = request.with_seed()
    picture = Image.new("RGB", (8, 8), request.colour)
    image = GeneratedImage(picture, request.seed, 0, {"settings": request.settings()}, request.colour)
    image.path = outputs.picture(picture, request.seed, request.colour, image.parameters, image.metadata)
    progress(ProgressEvent("image", 1, 1, payload=image))
    return Result(request=request, images=[image])


METHOD = Method(name="solid", modes=("solid",), request=SolidRequest, run=run)
'''


@pytest.fixture
def solid_method(tmp_path, monkeypatch):
    package = tmp_path / "plugins" / "solid_method"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(SOLID))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setattr(registry, "PACKAGES", registry.PACKAGES + ("solid_method",))
    registry.methods.cache_clear()
    yield
    registry.methods.cache_clear()
    sys.modules.pop("solid_method", None)


def test_a_new_method_is_a_package_and_one_line_of_registration(solid_method, tmp_path, monkeypatch, capsys):
    """As docs/architecture.md says: the package, one line in PACKAGES, and every front door has it."""
    assert "solid" in modes()
    result = Studio(device="cpu").run({"mode": "solid", "colour": "blue", "seed": 3}, outdir=tmp_path / "api")
    assert result.images[0].image.getpixel((0, 0)) == (0, 0, 255)
    assert (tmp_path / "api" / "00000-3-blue.png").is_file()

    from fastapi.testclient import TestClient

    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu"))
    with TestClient(app) as client:
        assert "solid" in client.get("/api/v1/modes").json()
        job = client.post("/api/v1/jobs", json={"mode": "solid", "seed": 5}).json()
        assert job["kind"] == "solid"
        done = client.portal.call(app.state.studio.runner.finished, job["id"], 60)
        assert done.status == "done"
        [image] = client.get(f"/api/v1/jobs/{job['id']}").json()["images"]
        assert image["seed"] == 5


# -- requests -----------------------------------------------------------------------------------
def test_the_base_request_checks_what_every_method_shares(photo):
    for mode, extra in (("txt2img", {"prompt": "x"}), ("dream", {"prompt": "x"}), ("upscale", {"init_image": photo})):
        with pytest.raises(BadRequest, match="device: unknown device 'tpu'"):
            make_request(mode=mode, device="tpu", **extra)
        with pytest.raises(BadRequest, match="seed"):
            make_request(mode=mode, seed=2**40, **extra)
        with pytest.raises(BadRequest, match="must be a file path or a PIL image"):
            make_request(mode=mode, **(extra | {"init_image": 3}))
        request = make_request(mode=mode, **extra)
        assert request.with_seed().seed >= 0 and request.settings()["mode"] == mode


# -- the one model cache ------------------------------------------------------------------------
def test_the_cache_is_bounded_by_memory_least_recently_used_first():
    layer = lambda: torch.nn.Linear(256, 256)  # noqa: E731  (257 KiB of fp32 weights)
    size = module_bytes(layer())
    cache = ModelCache(max_bytes=int(size * 2.5))
    a = cache.get("a", layer)
    cache.get("b", layer)
    assert cache.get("a", layer) is a  # a hit: not loaded again, and now the most recently used
    cache.get("c", layer)  # over the bound: "b" (least recently used) goes
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.loads == 3 and cache.bytes <= cache.max_bytes
    cache.get("d", lambda: layer().to("meta"))  # weights not in memory (a UNet its export serves for)
    assert "a" in cache and "c" in cache and cache.bytes == 2 * size


def test_one_cache_holds_every_network_a_mini_dream_and_generation_use(tmp_path):
    studio = Studio(device="cpu")
    studio.generate("red apple", seed=1, n_samples=1, steps=2, dtype="fp32")  # a dream optimises in fp32
    studio.run({"mode": "dream", "prompt": "red apple", "iterations": 1, "cutouts": 4, "save_every": 1000, "seed": 1},
               outdir=tmp_path)
    kinds = sorted(key[0] for key in studio.models._entries)
    # reverie-mini's OpenVINO bundle and its tokenizer, MiniLM's (generation, torch-free), reverie-mini
    # once (the dream's generator and its prior), the dream's guide, and the x2 upscaler (the
    # dream's 128 px picture shown at 256 px)
    assert kinds == ["bundle-tokenizers", "diffusion", "guide", "openvino-bundle", "upscaler"]
    assert studio.models.loads == 5


# -- progress and previews ----------------------------------------------------------------------
def test_previews_are_pictures_made_by_the_method_when_asked(studio):
    asked, plain = [], []
    studio.run(make_request(**FAST | {"steps": 4}, prompt="x", seed=1, n_samples=2), progress=asked.append, previews=True)
    studio.run(make_request(**FAST | {"steps": 4}, prompt="x", seed=1, n_samples=2), progress=plain.append)
    previews = [event.preview for event in asked if event.preview is not None]
    assert len(previews) == 2 and all(isinstance(p, Image.Image) for p in previews)  # steps 2 and 4
    assert previews[0].width >= 2 * previews[0].height  # the batch side by side
    assert not [event for event in plain if event.preview is not None]


# -- the Python API -----------------------------------------------------------------------------
def test_the_python_api_takes_a_prompt_and_diffusers_names(studio):
    result = studio.generate("a red (apple:1.2)", model="tiny-random", width=64, height=64, seed=7,
                             num_inference_steps=2, guidance_scale=3.5, num_images_per_prompt=2,
                             negative_prompt="blurry")
    assert (result.request.steps, result.request.cfg_scale, result.request.n_samples) == (2, 3.5, 2)
    assert result.request.negative_prompt == "blurry" and result.seeds == [7, 8]
    with pytest.raises(BadRequest, match="num_steps: unknown field"):
        studio.generate("x", model="tiny-random", num_steps=2)


# -- --from, bit for bit ------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_from_makes_a_picture_of_a_batch_again_bit_for_bit(studio, tmp_path, sampler):
    made = studio.generate(make_request(**FAST, prompt="a house", seed=20, n_samples=3, sampler=sampler), outdir=tmp_path)
    for image in made.images[1:]:
        request = request_from_picture(image.path)
        again = studio.generate(request)
        assert request.picture_count() == 1 and again.seeds == [image.seed]
        assert np.array_equal(pixels(again.images[0].image), pixels(image.image))


def test_a_picture_made_again_can_itself_be_made_again(studio, tmp_path):
    made = studio.generate(make_request(**FAST, prompt="a boat", seed=3, n_samples=2, n_iter=2), outdir=tmp_path / "a")
    again = studio.generate(request_from_picture(made.images[3].path), outdir=tmp_path / "b")
    third = studio.generate(request_from_picture(again.images[0].path))
    assert np.array_equal(pixels(third.images[0].image), pixels(made.images[3].image))


# -- memory is checked on what the model will really work on ------------------------------------
def test_an_image_mode_is_sized_from_its_input_picture_before_any_work(studio, tmp_path, monkeypatch):
    large = tmp_path / "large.png"
    Image.new("RGB", (3000, 3000), "gray").save(large)
    monkeypatch.setenv("REVERIE_MEMORY_LIMIT", str(256 * 2**20))
    events = []
    with pytest.raises(OutOfMemory, match="width/height"):
        studio.generate(make_request(model="tiny-random", mode="img2img", prompt="x", init_image=str(large), n_samples=1,
                                     steps=2), progress=events.append)
    assert [event.stage for event in events] == ["load"]  # no prompt encoded, no step taken


def test_every_mode_goes_through_the_memory_check_before_any_work(studio, tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_MEMORY_LIMIT", str(256 * 2**20))
    large = tmp_path / "large.png"
    Image.new("RGB", (2048, 1024), "gray").save(large)
    events = []
    # upscale: refused naming the largest picture of that shape that fits
    with pytest.raises(OutOfMemory, match=r"init_image: making this 2048x1024 picture 4 times larger needs about "
                                          r"[\d.]+ GiB but only 0.2 GiB is free; give at most \d+x\d+ pixels"):
        studio.run({"mode": "upscale", "init_image": str(large)}, progress=events.append)
    assert events == []
    # a dream: its iterations, and the upscale of its saved pictures
    with pytest.raises(OutOfMemory, match="make the dream smaller"):
        studio.run({"mode": "dream", "prompt": "x", "width": 1024, "height": 1024, "iterations": 1}, outdir=tmp_path / "d")
    with pytest.raises(OutOfMemory, match="upscale: making this 256x256 picture 4 times larger"):
        studio.run({"mode": "dream", "prompt": "x", "generator": "pixels", "width": 256, "height": 256, "upscale": 4,
                    "iterations": 1, "cutouts": 4}, outdir=tmp_path / "d")


# -- upscale keeps the picture's own settings ---------------------------------------------------
def test_upscale_keeps_the_source_settings_and_adds_the_step(monkeypatch, capsys, tmp_path, studio):
    made = studio.generate(make_request(**FAST, prompt="a green kite", seed=11, n_samples=1), outdir=tmp_path / "made")
    code, out, _ = run_cli(monkeypatch, capsys, "upscale", str(made.images[0].path), "--factor", "2",
                           "--outdir", str(tmp_path / "up"))
    assert code == 0
    [path] = (tmp_path / "up").glob("*.png")
    assert path.name == "00000-11-a-green-kite.png"
    info = read_png_info(path)
    assert info["reverie"]["seed"] == 11 and info["reverie"]["settings"]["prompt"] == "a green kite"
    assert info["reverie"]["upscaled"] == [{"factor": 2, "upscaler": "reverie 2x", "from_size": [64, 64]}]
    assert info["parameters"].startswith("a green kite\n") and "Postprocess upscale by: 2" in info["parameters"]
    assert Image.open(path).size == (128, 128)
