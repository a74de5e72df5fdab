"""Midjourney's parameters typed after the prompt (`--ar 16:9 --no cars --seed 7 ...`): how they
are read, the errors that name them, the request fields they become through every front door,
and the engine features behind them: sizes by aspect ratio, chaos, seamless tiles."""

from __future__ import annotations

import base64
import io
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reverie.errors import BadRequest
from reverie.prompts.parameters import apply_parameters, format_parameters, split_parameters
from reverie.studio import make_request, request_from_picture


def arrays(result) -> list[np.ndarray]:
    return [np.asarray(image.image.convert("RGB"), dtype=np.float64) for image in result.images]


def mean_pairwise_distance(pictures: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(pictures, 2)]))


@pytest.fixture
def mini(studio):
    """reverie-mini's torch modules from the studio's cache, asked for by each test (a request
    between tests may change the cache's entry)."""
    from reverie.methods.diffusion.run import diffusion_model

    return diffusion_model(studio.models, "mini", torch.device("cpu"), torch.float32)


# -- reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("typed, name, value", [
    ("--no cars", "no", ["cars"]),
    ("--no red cars, trees --no people", "no", ["red cars, trees", "people"]),
    ("--ar 16:9", "ar", "16:9"),
    ("--aspect 2:3", "ar", "2:3"),
    ("--seed 4294967295", "seed", 4294967295),
    ("--chaos 0", "chaos", 0),
    ("--c 100", "chaos", 100),
    ("--stylize 1000", "stylize", 1000),
    ("--s 50", "stylize", 50),
    ("--tile", "tile", True),
    ("--video", "video", True),
    ("--repeat 40", "repeat", 40),
    ("--r 2", "repeat", 2),
    ("--style Dark Fantasy --style Pixel art", "style", ["Dark Fantasy", "Pixel art"]),
    ("--AR 1:1", "ar", "1:1"),  # names in any case
    ("\u2014ar 4:3", "ar", "4:3"),  # the dash a phone makes of --
])
def test_each_parameter_is_read(typed, name, value):
    split = split_parameters(f"a castle on a hill {typed}")
    assert split.text == "a castle on a hill" and split.values == {name: value}


def test_dashes_that_start_no_parameter_are_text():
    for prompt in ("a--b", "count --5 down", "a cat -- dog", "well-known"):
        assert split_parameters(prompt).text == prompt and split_parameters(prompt).values == {}


@pytest.mark.parametrize("typed, named, says", [
    ("--ar 16x9", "--ar", "16:9"),
    ("--ar 20:1", "--ar", "8:1"),
    ("--ar", "--ar", "ratio"),
    ("--chaos 300", "--chaos", "0 to 100"),
    ("--c -1", "--c", "0 to 100"),
    ("--seed abc", "--seed", "whole number"),
    ("--seed", "--seed", "whole number"),
    ("--stylize 2000", "--stylize", "0 to 1000"),
    ("--repeat 0", "--repeat", "1 to 40"),
    ("--no", "--no", "--no cars"),
    ("--style", "--style", "style name"),
    ("--tile please", "--tile", "no value"),
    ("--foo 3", "--foo", "--no, --ar, --seed"),
    ("--ar 1:1 --ar 2:3", "--ar", "once"),
    ("--ar 16:9 in a hat", "--ar", "16:9"),  # parameters go at the end
])
def test_errors_name_the_parameter_and_what_to_write(typed, named, says):
    with pytest.raises(BadRequest) as caught:
        make_request({"prompt": f"a castle {typed}"})
    assert caught.value.field == "prompt"
    assert named in str(caught.value) and says in str(caught.value)


# -- request fields ------------------------------------------------------------------------------
def test_parameters_become_the_request_fields_they_stand_for():
    request = make_request({
        "prompt": "a castle --ar 16:9 --no people, cars --seed 7 --style Dark Fantasy --c 30 --s 250 --tile --r 3",
        "negative_prompt": "blurry", "styles": ["Watercolour"], "seed": 1, "n_iter": 1, "width": 512, "height": 512,
    })
    assert request.prompt == "a castle"
    assert request.negative_prompt == "blurry, people, cars"  # --no adds to the negative prompt
    assert request.styles == ["Watercolour", "Dark Fantasy"]  # --style adds to the styles
    # A typed parameter is the user's latest word: it wins over the field.
    assert (request.seed, request.n_iter, request.chaos, request.stylize, request.tile) == (7, 3, 30, 250, True)
    assert (request.aspect_ratio, request.width, request.height) == ("16:9", None, None)  # --ar decides the shape
    assert request.prompt_parameters == {"ar": "16:9", "no": ["people, cars"], "seed": 7, "style": ["Dark Fantasy"],
                                         "chaos": 30, "stylize": 250, "tile": True, "repeat": 3}
    assert format_parameters(request.prompt_parameters) == (
        "--ar 16:9 --no people, cars --seed 7 --style Dark Fantasy --chaos 30 --stylize 250 --tile --repeat 3")


def test_parameters_are_never_applied_twice():
    request = make_request({"prompt": "a castle --no cars --style Baroque", "negative_prompt": "blurry"})
    again = make_request(request.settings())  # what --from and "re-run" build from a picture's settings
    assert (again.prompt, again.negative_prompt, again.styles) == ("a castle", "blurry, cars", ["Baroque"])
    assert again.prompt_parameters == request.prompt_parameters
    assert apply_parameters({"prompt": "plain"}) == {"prompt": "plain"}


def test_shape_and_chaos_are_refused_where_they_mean_nothing(photo):
    with pytest.raises(BadRequest) as caught:
        make_request({"prompt": "a castle --ar 2:3", "mode": "img2img", "init_image": photo})
    assert caught.value.field == "aspect_ratio" and "width and height" in str(caught.value)
    with pytest.raises(BadRequest) as caught:
        make_request({"prompt": "a castle --chaos 50", "mode": "variations", "init_image": photo})
    assert caught.value.field == "chaos" and "strength" in str(caught.value)
    with pytest.raises(BadRequest) as caught:
        make_request({"prompt": "x", "aspect_ratio": "wide"})
    assert caught.value.field == "aspect_ratio"


# -- sizes ---------------------------------------------------------------------------------------
def test_ar_sizes_for_the_builtin_model(mini):
    from reverie.methods.diffusion.images import txt2img_size

    assert mini.size_multiple == 32 and mini.native_size == 128
    sizes = {ratio: txt2img_size(make_request({"prompt": f"x --ar {ratio}"}), mini) for ratio in ("16:9", "2:3", "1:1")}
    assert sizes == {"16:9": (160, 96), "2:3": (96, 160), "1:1": (128, 128)}
    for ratio, (width, height) in sizes.items():
        w, h = map(int, ratio.split(":"))
        assert width % 32 == 0 and height % 32 == 0
        assert abs(width * height / 128**2 - 1) < 0.1  # about the native area
        assert abs(np.log(width / height * h / w)) < 0.12  # the shape asked for, on the model's 32 px grid
    # One side given: the other from the ratio. Both given: they win (a picture's own settings).
    assert txt2img_size(make_request({"prompt": "x", "aspect_ratio": "16:9", "width": 256}), mini) == (256, 144)
    assert txt2img_size(make_request({"prompt": "x", "aspect_ratio": "16:9", "width": 64, "height": 64}), mini) == (64, 64)


def test_typed_parameters_make_the_pictures_they_say(studio, tmp_path):
    result = studio.run({"prompt": "a red apple --ar 16:9 --no leaf --seed 5 --repeat 2", "n_samples": 1, "steps": 3,
                         "upscale": 1}, outdir=tmp_path)
    assert [image.seed for image in result.images] == [5, 6]  # --repeat 2 doubles the pictures
    assert all(image.image.size == (160, 96) for image in result.images)
    first = result.images[0]
    assert first.parameters.splitlines()[:2] == ["a red apple", "Negative prompt: leaf"]
    assert first.metadata["settings"]["prompt_parameters"] == {"ar": "16:9", "no": ["leaf"], "seed": 5, "repeat": 2}
    # --from builds the request again from the clean prompt: nothing is applied twice.
    again = request_from_picture(result.images[1].path)
    assert (again.prompt, again.negative_prompt, again.seed, again.n_iter) == ("a red apple", "leaf", 6, 1)
    assert (again.width, again.height, again.aspect_ratio) == (160, 96, "16:9")
    # The same picture as asked for with fields.
    plain = studio.run({"prompt": "a red apple", "negative_prompt": "leaf", "seed": 5, "n_samples": 1, "steps": 3,
                        "upscale": 1, "width": 160, "height": 96})
    assert np.array_equal(arrays(plain)[0], arrays(result)[0])


def test_cli_generate_flags_and_info(monkeypatch, capsys, tmp_path):
    from conftest import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "generate", "a red apple --no leaf --seed 9", "--ar", "2:3", "--tile",
                             "--chaos", "20", "-n", "2", "--steps", "3", "--upscale", "1", "--outdir", str(tmp_path))
    assert code == 0, err
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name.split("-")[1] for f in files] == ["9", "10"] and Image.open(files[0]).size == (96, 160)
    code, out, err = run_cli(monkeypatch, capsys, "info", str(files[0]))
    assert code == 0 and "Tiling: True" in out and "Negative prompt: leaf" in out
    assert "parameters typed after the prompt: --no leaf --seed 9" in out
    assert '"chaos": 20' in out and '"aspect_ratio": "2:3"' in out
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a red apple --chaos 300", "--steps", "3")
    assert code == 2 and "--chaos" in err


def test_video_writes_the_pictures_being_made_and_leaves_them_as_they_are(studio, tmp_path):
    """--video: the previews of every other step, ending on the finished pictures side by side;
    the pictures are the ones made without it."""
    from reverie.outputs.video import read_frames

    fields = {"prompt": "a red apple", "seed": 3, "n_samples": 2, "steps": 6, "upscale": 1}
    recorded = studio.run({**fields, "prompt": "a red apple --video"}, outdir=tmp_path / "video")
    plain = studio.run(fields)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(recorded), arrays(plain)))
    assert recorded.video.name.endswith("-3-progress.mp4") and recorded.request.progress_video
    frames = [np.asarray(frame, dtype=np.float64) for frame in read_frames(recorded.video)]
    assert len(frames) == 6 // 2 + 8  # a preview every other step, then the finished pictures held a second
    finished = np.concatenate([np.asarray(image.image.resize((frames[0].shape[1] // 2, frames[0].shape[0])), dtype=np.float64)
                               for image in recorded.images], axis=1)
    assert np.abs(frames[-1] - finished).mean() < 6  # the last frame is the pictures (H.264 rounds them)
    assert np.abs(frames[0] - finished).mean() > 4 * np.abs(frames[-1] - finished).mean()  # the first is noise
    from test_server_api import FAST, make_client

    with make_client(tmp_path / "studio") as client:  # the studio keeps no progress video
        refused = client.post("/api/v1/jobs", json={"prompt": "a kite --video", **FAST})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "prompt"
        assert "--video" in refused.json()["error"]["message"]


# -- the HTTP APIs ----------------------------------------------------------------------------------
def test_parameters_through_the_native_and_openai_apis(tmp_path):
    from reverie.outputs.metadata import parse_a1111_parameters
    from test_server_api import FAST, make_client, wait_done

    with make_client(tmp_path) as client:
        job = client.post("/api/v1/jobs", json={"prompt": "a kite --no string --seed 9 --repeat 2", "n_samples": 1, **FAST})
        assert job.status_code == 202, job.text
        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done" and [image["seed"] for image in done["images"]] == [9, 10]
        settings = client.get(f"/api/v1/images/{done['images'][0]['id']}").json()["settings"]
        assert (settings["prompt"], settings["negative_prompt"]) == ("a kite", "string")
        assert settings["prompt_parameters"] == {"no": ["string"], "seed": 9, "repeat": 2}
        refused = client.post("/api/v1/jobs", json={"prompt": "a kite --ar 16x9", **FAST})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "prompt"
        assert "--ar" in refused.json()["error"]["message"]

        response = client.post("/v1/images/generations", json={"prompt": "a kite --no clouds --seed 4", "n": 1,
                                                               "size": "64x64", "response_format": "b64_json"})
        assert response.status_code == 200, response.text
        picture = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
        fields = parse_a1111_parameters(picture.info["parameters"])
        assert (fields["prompt"], fields["negative_prompt"], fields["seed"]) == ("a kite", "clouds", 4)
        refused = client.post("/v1/images/generations", json={"prompt": "a kite --foo", "size": "64x64"})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "prompt"

        # A1111's client always sends a size: a typed --ar decides the shape all the same.
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox --no tail --ar 2:1", "tiling": True, "seed": 5,
                                                          "steps": 2, "width": 512, "height": 512})
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])["infotexts"][0]
        assert info.startswith("a fox\nNegative prompt: tail\n") and "Tiling: True" in info
        picture = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert picture.width > picture.height


# -- tiles ---------------------------------------------------------------------------------------
def wrap_differences(picture: np.ndarray, axis: int, period: int) -> tuple[float, float]:
    """(the seam where the picture's far edge meets its near edge, the mean difference across the
    picture's own boundaries at the same phase of the model's grid, every `period` pixels).
    Boundaries are compared at one phase because the UNet's strided layers make the differences
    across their cells larger than those inside them."""
    lines = np.moveaxis(picture, axis, 1)
    wrapped = np.concatenate([lines, lines[:, :1]], axis=1)
    steps = np.abs(np.diff(wrapped, axis=1)).mean(axis=(0, 2))  # steps[-1] is the seam
    return float(steps[-1]), float(steps[period - 1 : -1 : period].mean())


def blank_edges(picture: np.ndarray) -> float:
    """How far the pixels along all four edges are from white, reverie-mini's background."""
    edges = np.concatenate([picture[0], picture[-1], picture[:, 0], picture[:, -1]])
    return float((255 - edges).mean())


def test_a_tile_picture_wraps_without_a_seam(studio):
    tiled = arrays(studio.generate("a red apple --tile", seed=21, n_samples=4, steps=6, upscale=1))
    seams, inside = zip(*(wrap_differences(p, axis, 32) for p in tiled for axis in (0, 1)))
    # The seam is one more boundary of the picture: no larger than those inside it.
    assert np.mean(seams) <= 1.2 * np.mean(inside), (seams, inside)
    # ... while the picture really crosses its edges (there is something that could show a seam) ...
    assert min(blank_edges(p) for p in tiled) > 40
    # ... and the measure sees a seam where there is one: the same picture cut 16 pixels short.
    cut = [wrap_differences(p[:, :-16], 1, 32)[0] for p in tiled]
    assert np.mean(cut) > 2 * np.mean(seams)
    # A picture made without --tile keeps its subject inside a white margin: it does not cross its edges.
    plain = arrays(studio.generate("a red apple", seed=21, n_samples=4, steps=6, upscale=1))
    assert max(blank_edges(p) for p in plain) < 10


def test_the_upscaler_keeps_a_tile_seamless(studio):
    from reverie.methods.upscale.pictures import upscaled

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64] * (2 * np.pi / 64)
    pattern = 128 + (60 * np.sin(x * 2 + y) + 40 * np.cos(3 * y))[..., None] + rng.normal(0, 25, (64, 64, 3))
    tile = Image.fromarray(np.clip(pattern, 0, 255).astype(np.uint8))
    rolled = Image.fromarray(np.roll(np.asarray(tile), (32, 32), axis=(0, 1)))
    for factor in (2, 4):
        # Enlarging the tile and then moving its edges to the middle is enlarging the moved tile:
        # the wrapped edges join as smoothly as the middle does.
        moved = np.asarray(upscaled([rolled], factor, studio.models, wrap=True)[0], dtype=np.int16)
        for wrap, low, high in ((True, 0, 2), (False, 10, 255)):
            whole = np.asarray(upscaled([tile], factor, studio.models, wrap=wrap)[0], dtype=np.int16)
            assert low <= np.abs(np.roll(whole, (32 * factor, 32 * factor), axis=(0, 1)) - moved).max() <= high, wrap


@pytest.mark.parametrize("upscale", [1, 2])
def test_a_tile_picture_is_the_same_picture_moved_when_its_noise_moves(studio, monkeypatch, upscale):
    """The whole torch path (UNet, sampler, VAE, upscaler) is circular under --tile: starting
    from the noise moved by a quarter turn gives the picture moved by a quarter turn, so the
    edges that now meet in its middle join as the rest of the picture does. Without --tile they
    do not. (The OpenVINO bundle's tiles are these pictures: tests/test_mini_compiled.py.)"""
    from reverie.methods.diffusion import batches

    made = batches.initial_noise

    def moved_noise(seeds, shape):
        noise, generators = made(seeds, shape)
        return torch.roll(noise, (shape[1] // 4, shape[2] // 4), dims=(2, 3)), generators

    def pictures(tile: bool, moved: bool):
        with monkeypatch.context() as patch:
            if moved:
                patch.setattr(batches, "initial_noise", moved_noise)
            # fp32: in bf16 the sums over the moved positions round differently, by up to ~12 levels
            return arrays(studio.generate("a blue fish", seed=3, n_samples=1, steps=4, upscale=upscale, tile=tile,
                                          dtype="fp32", runtime="torch"))[0]

    quarter = 32 * upscale
    for tile, low, high in ((True, 0, 3), (False, 30, 255)):
        shifted = np.roll(pictures(tile, False), (quarter, quarter), axis=(0, 1))
        assert low <= np.abs(shifted - pictures(tile, True)).max() <= high, tile


def conv_modes(components) -> set[str]:
    return {m.padding_mode for module in (components.unet, components.vae) for m in module.modules()
            if isinstance(m, torch.nn.Conv2d)}


def test_tile_makes_the_unet_and_the_vae_circular_for_that_request_only(mini, studio):
    from reverie.methods.diffusion.pipelines import circular_padding

    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    words = torch.randn(1, 8, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), circular_padding(mini, True):
        assert conv_modes(mini) == {"circular"}
        # Moving the input around the torus moves the output with it: there is no edge anywhere.
        decoded = mini.vae.decode(latent).sample
        assert torch.allclose(torch.roll(decoded, 8, dims=3), mini.vae.decode(torch.roll(latent, 1, dims=3)).sample, atol=1e-4)
        noise = mini.unet(latent, 500, encoder_hidden_states=words).sample
        moved = mini.unet(torch.roll(latent, 4, dims=3), 500, encoder_hidden_states=words).sample
        assert torch.allclose(torch.roll(noise, 4, dims=3), moved, atol=1e-4)
    assert conv_modes(mini) == {"zeros"}
    with pytest.raises(RuntimeError), circular_padding(mini, True):
        raise RuntimeError("a request that fails")
    assert conv_modes(mini) == {"zeros"}

    # Through the studio's torch pipeline: put back after a tile request, and after one that fails halfway.
    studio.generate("a red apple --tile", seed=1, n_samples=1, steps=3, upscale=1, runtime="torch")
    assert conv_modes(mini) == {"zeros"}

    def fail(event):
        if event.stage == "denoise":
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        studio.generate("a red apple --tile", seed=1, n_samples=1, steps=3, upscale=1, runtime="torch", progress=fail)
    assert conv_modes(mini) == {"zeros"}


# -- chaos ---------------------------------------------------------------------------------------
def test_chaos_sets_how_different_the_pictures_of_a_batch_are(studio):
    def batch(chaos):
        return arrays(studio.generate("a red apple", seed=40, n_samples=4, steps=6, upscale=1, chaos=chaos))

    calm, wild, plain = batch(0), batch(100), batch(None)
    assert mean_pairwise_distance(calm) < 0.75 * mean_pairwise_distance(wild)
    # chaos 100 is each picture from its own seed's noise, as without chaos, bit for bit.
    assert all(np.array_equal(a, b) for a, b in zip(wild, plain))


def test_from_makes_a_chaos_picture_of_a_batch_again_bit_for_bit(studio, tmp_path):
    made = studio.run({"prompt": "a red apple --chaos 30 --seed 50", "n_samples": 4, "steps": 4, "upscale": 1}, outdir=tmp_path)
    third = made.images[2]
    request = request_from_picture(third.path)
    assert (request.seed, request.keep_only, request.chaos) == (50, 2, 30)
    again = studio.run(request)
    assert len(again.images) == 1 and again.images[0].seed == 52
    assert np.array_equal(arrays(again)[0], arrays(made)[2])
