"""Midjourney's actions on one picture: upscale, vary (subtle, strong), zoom out, pan, reroll.

The request each action builds from a picture's own settings, then each action through the native
API on reverie-mini at a few steps, judged on its pixels: the upscale is twice the size, a zoom-out
keeps the size and shows the original shrunk in its centre, a pan keeps the original's pixels and
adds beside them, a subtle variation stays closer than a strong one.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from test_server_api import wait_done as wait_job

from reverie.actions import ACTIONS, VARY_STRONG, VARY_SUBTLE, fields_for_action
from reverie.errors import BadRequest
from reverie.outputs.metadata import read_png_info
from reverie.studio import make_request


def settings_of(**fields) -> dict:
    """A picture's stored settings, as the method records them (every field of its request)."""
    base = {"prompt": "red apple, Noto emoji", "negative_prompt": "blurry", "model": "mini", "steps": 7,
            "cfg_scale": 3.5, "sampler": "euler", "n_samples": 4, "seed": 100, "width": 128, "height": 128, "upscale": 2}
    return make_request(base | fields).settings()


@pytest.fixture
def picture_file(tmp_path):
    def make(width=256, height=256):
        path = tmp_path / f"picture-{width}x{height}.png"
        Image.new("RGB", (width, height), (200, 40, 40)).save(path)
        return str(path)
    return make


# -- the request each action builds --------------------------------------------------------------
def test_every_action_is_a_valid_request_with_the_pictures_own_look(picture_file):
    picture = picture_file()
    for name, action in ACTIONS.items():
        fields = fields_for_action(settings_of(), name, picture)
        request = make_request(fields)
        assert request.mode == ("txt2img" if name == "reroll" else action.mode), name
        assert "seed" not in fields, name  # a new seed is drawn for every action
        if name in ("upscale", "reroll"):
            continue
        assert request.init_image == picture
        assert (request.prompt, request.negative_prompt, request.model) == ("red apple, Noto emoji", "blurry", "mini")
        assert (request.steps, request.cfg_scale, request.sampler, request.n_samples) == (7, 3.5, "euler", 4)
        assert request.upscale is None  # the picture's own size decides how the model works on it


def test_upscale_is_the_picture_twice_as_large(picture_file):
    fields = fields_for_action(settings_of(), "upscale", picture_file())
    assert fields == {"mode": "upscale", "init_image": picture_file(), "upscale": 2}


def test_vary_is_variations_at_two_strengths(picture_file):
    subtle = fields_for_action(settings_of(), "vary_subtle", picture_file())
    strong = fields_for_action(settings_of(), "vary_strong", picture_file())
    assert (subtle["mode"], subtle["strength"]) == ("variations", VARY_SUBTLE)
    assert (strong["mode"], strong["strength"]) == ("variations", VARY_STRONG)
    assert VARY_SUBTLE < VARY_STRONG


def test_a_template_pictures_action_keeps_the_variant_it_drew(picture_file):
    settings = settings_of(prompt="a {red|blue} apple", negative_prompt="{dark|pale}", combinatorial=True) | {
        "picture_prompt": {"template": "a {red|blue} apple", "variant": "a blue apple", "prompt": "a blue apple",
                           "negative_prompt": "pale", "negative_variant": "pale"}}
    for action in ("vary_subtle", "zoom_out_2", "pan_left"):
        fields = fields_for_action(settings, action, picture_file())
        assert (fields["prompt"], fields["negative_prompt"], fields["combinatorial"]) == ("a blue apple", "pale", False)
    assert fields_for_action(settings, "reroll", picture_file())["prompt"] == "a {red|blue} apple"  # a new draw
    settings["picture_prompt"]["expanded"] = "a blue apple, Noto emoji"  # expanded: those words, not new ones
    settings["expand"] = True
    fields = fields_for_action(settings, "vary_strong", picture_file())
    assert (fields["prompt"], fields["expand"]) == ("a blue apple, Noto emoji", False)


def test_zoom_out_grows_every_side_and_asks_for_the_pictures_size(picture_file):
    one_half = fields_for_action(settings_of(), "zoom_out_1.5", picture_file(256, 256))
    assert [one_half[f"outpaint_{side}"] for side in ("left", "right", "up", "down")] == [64, 64, 64, 64]
    assert (one_half["width"], one_half["height"], one_half["mode"]) == (256, 256, "outpaint")
    twice = fields_for_action(settings_of(), "zoom_out_2", picture_file(320, 256))
    assert [twice[f"outpaint_{side}"] for side in ("left", "right", "up", "down")] == [160, 160, 128, 128]
    assert (twice["width"], twice["height"]) == (320, 256)


def test_pan_grows_one_side_by_half(picture_file):
    picture = picture_file(320, 256)
    extents = {name: make_request(fields_for_action(settings_of(), name, picture)).outpaint_extents
               for name in ("pan_left", "pan_right", "pan_up", "pan_down")}
    assert extents == {"pan_left": (160, 0, 0, 0), "pan_right": (0, 160, 0, 0), "pan_up": (0, 0, 128, 0),
                       "pan_down": (0, 0, 0, 128)}
    assert fields_for_action(settings_of(), "pan_right", picture).get("width") is None  # the canvas grows


def test_reroll_is_the_same_request_with_a_new_seed_and_count(picture_file):
    # A picture re-made alone from its batch (keep_only) rerolls its whole batch of four.
    settings = settings_of(keep_only=2, n_samples=4)
    fields = fields_for_action(settings, "reroll", picture_file())
    request = make_request(fields)
    assert "seed" not in fields and request.keep_only is None and request.picture_count() == 4
    assert (request.prompt, request.steps, request.cfg_scale, request.width) == ("red apple, Noto emoji", 7, 3.5, 128)
    assert make_request(fields_for_action(settings_of(n_samples=3, n_iter=2), "reroll", picture_file())).picture_count() == 6


def test_an_edited_pictures_own_shape_is_not_carried(picture_file):
    """Varying an outpainted picture varies that picture: its extents, strength and input are gone."""
    outpainted = settings_of(mode="outpaint", init_image="/somewhere/else.png", outpaint_left=64, strength=0.9,
                             width=None, height=None)
    fields = fields_for_action(outpainted, "vary_strong", picture_file())
    request = make_request(fields)
    assert request.outpaint_extents == (0, 0, 0, 0) and request.strength == VARY_STRONG
    assert request.init_image == picture_file() and request.width is None


def test_unknown_action_names_the_valid_ones(picture_file):
    with pytest.raises(BadRequest) as refused:
        fields_for_action(settings_of(), "zoom_in", picture_file())
    assert refused.value.field == "action" and "zoom_in" in str(refused.value)
    assert all(name in str(refused.value) for name in ACTIONS)


def test_a_gan_picture_is_upscaled_or_rerolled_only(picture_file):
    gan = {"mode": "gan", "model": "gan:mini64", "n_samples": 4, "seed": 3}
    assert fields_for_action(gan, "upscale", picture_file())["mode"] == "upscale"
    assert fields_for_action(gan, "reroll", picture_file())["mode"] == "gan"
    with pytest.raises(BadRequest, match="mode gan"):
        fields_for_action(gan, "vary_subtle", picture_file())


# -- through the native API on reverie-mini ------------------------------------------------------
@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    data = tmp_path_factory.mktemp("studio")
    with TestClient(create_app(ServerConfig(data_dir=data, default_model="mini", device="cpu"))) as client:
        yield client


def wait_done(client, job_id, headers=None, timeout=300):
    job = wait_job(client, job_id, headers, timeout)
    assert job["status"] == "done", job
    return job


def pixels_of(client, image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(image["url"]).content)).convert("RGB"), np.float32)


@pytest.fixture(scope="module")
def apple(mini):
    """A reverie-mini picture (256 px) in the gallery."""
    job = mini.post("/api/v1/jobs", json={"prompt": "red apple, Noto emoji", "n_samples": 1, "steps": 10, "seed": 5})
    return wait_done(mini, job.json()["id"])["images"][0]


def act(client, image, action):
    queued = client.post(f"/api/v1/images/{image['id']}/actions/{action}")
    assert queued.status_code == 202, queued.json()
    assert queued.json()["status"] in ("queued", "running") and queued.json()["request"]["mode"]
    return wait_done(client, queued.json()["id"])


def test_api_lists_the_actions(mini):
    listed = mini.get("/api/v1/actions").json()
    assert [a["name"] for a in listed] == list(ACTIONS)
    assert {a["name"]: a["mode"] for a in listed}["vary_subtle"] == "variations"


def test_api_upscale_doubles_the_size(mini, apple):
    done = act(mini, apple, "upscale")
    [big] = done["images"]
    assert (big["width"], big["height"]) == (2 * apple["width"], 2 * apple["height"])
    assert big["settings"]["prompt"] == "red apple, Noto emoji"  # the picture's own settings kept
    assert big["prompt"] == "red apple, Noto emoji"  # so the gallery finds it by its prompt
    shrunk = Image.fromarray(pixels_of(mini, big).astype(np.uint8)).resize((apple["width"], apple["height"]), Image.LANCZOS)
    assert np.abs(np.asarray(shrunk, np.float32) - pixels_of(mini, apple)).mean() < 6  # the same picture


def test_api_zoom_out_keeps_the_size_and_shows_the_original_shrunk(mini, apple):
    done = act(mini, apple, "zoom_out_2")
    [zoomed] = done["images"]
    assert (zoomed["width"], zoomed["height"]) == (apple["width"], apple["height"])
    request = done["request"]
    assert (request["mode"], request["outpaint_left"], request["outpaint_up"]) == ("outpaint", 128, 128)
    assert request["prompt"] == "red apple, Noto emoji" and request["steps"] == 10
    new, old = pixels_of(mini, zoomed), pixels_of(mini, apple)
    shrunk = np.asarray(Image.fromarray(old.astype(np.uint8)).resize((128, 128), Image.LANCZOS), np.float32)
    centre = new[64:192, 64:192]
    inner = slice(4, -4)  # the resize's kernel reaches a few pixels into the filled border
    assert np.abs(centre[inner, inner] - shrunk[inner, inner]).mean() < 2  # outpaint kept those pixels
    # The ring around it is new, drawn content, not the shrunk picture's white margin copied out.
    ring = np.concatenate([new[:48].reshape(-1, 3), new[-48:].reshape(-1, 3)])
    assert np.abs(ring - old[:48].reshape(-1, 3).mean(0)).mean() > 10


def test_api_pan_right_widens_and_keeps_the_original_on_the_left(mini, apple):
    done = act(mini, apple, "pan_right")
    [panned] = done["images"]
    assert (panned["width"], panned["height"]) == (apple["width"] * 3 // 2, apple["height"])
    new, old = pixels_of(mini, panned), pixels_of(mini, apple)
    assert np.array_equal(new[:, : apple["width"]], old)  # every pixel of the original, exactly


def test_api_vary_subtle_stays_closer_than_vary_strong(mini):
    # A castle (the apple hardly moves at either strength), two pictures per variation job.
    job = mini.post("/api/v1/jobs", json={"prompt": "a castle on a hill, Noto emoji", "n_samples": 2, "steps": 10, "seed": 3})
    castle = wait_done(mini, job.json()["id"])["images"][0]
    old = pixels_of(mini, castle)
    subtle = act(mini, castle, "vary_subtle")
    strong = act(mini, castle, "vary_strong")
    assert subtle["request"]["strength"] == VARY_SUBTLE and strong["request"]["strength"] == VARY_STRONG
    assert subtle["request"]["prompt"] == "a castle on a hill, Noto emoji" and len(subtle["images"]) == 2
    near = np.mean([np.abs(pixels_of(mini, image) - old).mean() for image in subtle["images"]])
    far = np.mean([np.abs(pixels_of(mini, image) - old).mean() for image in strong["images"]])
    assert near < far, (near, far)
    assert near > 1  # a variation, not a copy


def test_api_reroll_makes_as_many_pictures_with_new_seeds(mini):
    job = mini.post("/api/v1/jobs", json={"prompt": "a blue car, Noto emoji", "n_samples": 2, "steps": 2, "seed": 40})
    first = wait_done(mini, job.json()["id"])
    rerolled = act(mini, first["images"][1], "reroll")
    assert len(rerolled["images"]) == 2 and rerolled["request"]["prompt"] == "a blue car, Noto emoji"
    assert rerolled["request"]["seed"] != 40 and rerolled["request"]["steps"] == 2


def test_api_unknown_action_is_422_naming_it(mini, apple):
    refused = mini.post(f"/api/v1/images/{apple['id']}/actions/zoom_in")
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["param"] == "action" and "zoom_in" in error["message"] and "pan_left" in error["message"]


def test_api_another_users_picture_is_404(tmp_path):
    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu", multi_user=True,
                          first_month_credits=5, monthly_credits=5)
    with TestClient(create_app(config)) as client:
        gallery = client.app.state.studio.gallery
        ann, bob = gallery.add_user("ann", "ann-pw"), gallery.add_user("bob", "bob-pw")
        auth = {name: {"Authorization": f"Bearer {gallery.new_api_key(user.id)}"} for name, user in (("ann", ann), ("bob", bob))}
        job = client.post("/api/v1/jobs", json={"prompt": "ann's garden", "n_samples": 1, "steps": 2, "width": 64, "height": 64},
                          headers=auth["ann"])
        image = wait_done(client, job.json()["id"], auth["ann"])["images"][0]
        assert client.post(f"/api/v1/images/{image['id']}/actions/upscale", headers=auth["bob"]).status_code == 404
        before = client.get("/api/v1/me", headers=auth["ann"]).json()["credits"]
        queued = client.post(f"/api/v1/images/{image['id']}/actions/zoom_out_1.5", headers=auth["ann"])
        assert queued.status_code == 202
        assert client.get("/api/v1/me", headers=auth["ann"]).json()["credits"] == before - 1  # charged like any job
        zoomed = wait_done(client, queued.json()["id"], auth["ann"])
        assert zoomed["request"]["outpaint_left"] == 16 and (zoomed["images"][0]["width"], zoomed["images"][0]["height"]) == (64, 64)


def test_reroll_of_a_picture_made_from_an_upload_is_refused(tmp_path):
    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    with TestClient(create_app(ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu"))) as client:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
        import base64

        job = client.post("/api/v1/jobs", json={"mode": "img2img", "prompt": "a leaf", "n_samples": 1, "steps": 2,
                                                "init_image": base64.b64encode(buffer.getvalue()).decode()})
        image = wait_done(client, job.json()["id"])["images"][0]
        refused = client.post(f"/api/v1/images/{image['id']}/actions/reroll")
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "image_id"
        assert "gone" in refused.json()["error"]["message"]
        assert client.post(f"/api/v1/images/{image['id']}/actions/vary_subtle").status_code == 202  # the picture itself is there


def test_python_api_pan_left_keeps_the_original_on_the_right(studio, tmp_path):
    from reverie.studio import request_for_action

    source = studio.generate("a green tree, Noto emoji", steps=3, seed=9, n_samples=1, outdir=tmp_path / "src").images[0]
    request = request_for_action(source.path, "pan_left", n_samples=1, seed=2)
    assert (request.mode, request.outpaint_left, request.prompt) == ("outpaint", 128, "a green tree, Noto emoji")
    [panned] = studio.run(request, outdir=tmp_path / "pan").images
    old = np.asarray(source.image.convert("RGB"))
    assert panned.image.size == (384, 256) and np.array_equal(np.asarray(panned.image.convert("RGB"))[:, 128:], old)


def test_cli_action_zooms_out_and_names_unknown_actions(monkeypatch, capsys, tmp_path):
    from conftest import run_cli
    from test_cli import TINY

    code, _, err = run_cli(monkeypatch, capsys, "generate", "a yellow star", *TINY, "-n", "2", "--seed", "4",
                           "--outdir", str(tmp_path / "src"))
    assert code == 0, err
    source = sorted((tmp_path / "src").glob("*.png"))[0]
    code, out, err = run_cli(monkeypatch, capsys, "action", "zoom_out_2", str(source), "-n", "1", "--outdir", str(tmp_path / "zoom"))
    assert code == 0, err
    [zoomed] = sorted((tmp_path / "zoom").glob("*.png"))
    assert Image.open(zoomed).size == Image.open(source).size
    made = read_png_info(zoomed)["reverie"]["settings"]
    assert (made["mode"], made["outpaint_left"], made["prompt"], made["steps"]) == ("outpaint", 32, "a yellow star", 3)
    code, _, err = run_cli(monkeypatch, capsys, "action", "zoom_in", str(source))
    assert code == 2 and "zoom_in" in err and "zoom_out_2" in err
