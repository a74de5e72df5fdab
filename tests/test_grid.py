"""Grids that compare (A1111's X/Y/Z plot): axes and their mistakes, cells made exactly as single
runs make them, labelled sheets, stops, resumes, the CLI and the native API."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, run_cli
from reverie.errors import BadRequest
from reverie.outputs.metadata import read_png_info
from reverie.studio import make_request, request_from_picture

MINI = {"prompt": "red apple, Noto emoji", "steps": 2, "upscale": 1, "width": 64, "height": 64}
TINY = {"prompt": "a castle on a hill", "model": "tiny-random", "steps": 2, "width": 64, "height": 64}


def grid(base: dict, **fields):
    return make_request({"mode": "grid", "base": base, **fields})


# -- axes ------------------------------------------------------------------------------------------
def test_axis_values_are_read_like_a1111_with_quotes_and_ranges():
    from reverie.methods.grid.axes import expanded, parse_axis

    assert parse_axis('prompt=castle,"temple, ruined", tower').values == ["castle", "temple, ruined", "tower"]
    assert expanded(parse_axis("steps=1-5")) == [1, 2, 3, 4, 5]
    assert expanded(parse_axis("steps=1-10 (+3)")) == [1, 4, 7, 10]
    assert expanded(parse_axis("steps=10-4 (-3)")) == [10, 7, 4]
    assert expanded(parse_axis("cfg=0.25-1 (+0.25)")) == [0.25, 0.5, 0.75, 1.0]
    assert expanded(parse_axis("cfg=2-8 [4], 12")) == [2, 4, 6, 8, "12"]
    assert expanded(parse_axis("sampler=euler,dpmpp_2m")) == ["euler", "dpmpp_2m"]  # ranges only for numbers
    request = grid(TINY, x="cfg=2-6 (+2)", y={"name": "seed", "values": [1, 2]})
    assert [cell.request.cfg_scale for cell in request.cells()] == [2, 4, 6, 2, 4, 6]
    assert [cell.request.seed for cell in request.cells()] == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("fields, field, words", [
    ({"x": "colour=red,blue"}, "x", "unknown axis 'colour'"),
    ({"x": "n_samples=1,2"}, "x", "unknown axis 'n_samples'"),
    ({"x": "cfg=3,loud"}, "x", "cfg value 'loud'"),
    ({"x": "cfg=3,99"}, "x", "cfg value '99'"),
    ({"y": "steps=10,0"}, "y", "steps value '0'"),
    ({"x": "sampler=euler,warp"}, "x", "sampler value 'warp'"),
    ({"z": "style=None,Neon"}, "z", "style value 'Neon'"),
    ({"x": "prompt=temple,ruin"}, "x", "'temple' is what is replaced, and it is not in the prompt"),
    ({"x": "seed=1-10", "y": "cfg=1-7"}, "x", "70 cells; a grid has at most 64"),
    ({"x": "cfg=1,2", "y": "cfg=3,4"}, "y", "cfg is already the x axis"),
    ({"x": "cfg"}, "x", "write an axis as NAME=VALUE"),
    ({"x": "steps=1-100 (+0)"}, "x", "never gets from 1 to 100"),
    ({}, "x", "give at least one axis"),
    ({"x": "cfg=1,2", "base": {"prompt": "x", "colour": "red"}}, "base.colour", "unknown field"),
    ({"x": "cfg=1,2", "base": {"mode": "dream", "prompt": "x"}}, "base.mode", "a grid varies a diffusion request"),
    ({"x": "sampler=euler,lcm", "y": "steps=20,60"}, "y", "the cell LCM, Steps: 60 cannot be made"),
])
def test_every_axis_mistake_is_a_bad_request_that_names_it(fields, field, words):
    fields = {"base": TINY} | fields
    with pytest.raises(BadRequest) as caught:
        make_request({"mode": "grid", **fields})
    assert caught.value.field == field and words in str(caught.value)


def test_cells_are_the_base_with_their_axis_values_and_one_seed():
    request = grid(TINY | {"negative_prompt": "castle ruins", "styles": ["Pixel art"]}, seed=5,
                   x="prompt=castle,temple", y="style=None,Watercolour", z="eta=0,0.5")
    cells = request.cells()
    assert request.shape() == (2, 2, 2) and len(cells) == 8
    assert {cell.request.seed for cell in cells} == {5}  # A1111: every cell the same seed
    temple = cells[1].request
    assert temple.prompt == "a temple on a hill" and temple.negative_prompt == "temple ruins"  # S/R in both, as A1111
    assert cells[0].request.styles == ["Pixel art"] and cells[2].request.styles == ["Pixel art", "Watercolour"]
    assert [cell.request.eta for cell in cells] == [0.0] * 4 + [0.5] * 4
    assert cells[3].values["x"] == {"axis": "prompt", "value": "temple", "label": "temple"}
    assert cells[3].values["z"]["label"] == "eta: 0"
    assert request.picture_count() == 8 + 2  # one picture per cell, one labelled grid per z value
    assert grid(TINY | {"n_samples": 3}, x="cfg=1,2").picture_count() == 2 * 3 + 1
    # The base's seed is the grid's: a seed fixed once makes every cell's.
    assert grid(TINY | {"seed": 9}, x="cfg=1,2").seed == 9


# -- cells against single runs, on the built-in model --------------------------------------------
@pytest.fixture(scope="module")
def mini_grid(tmp_path_factory):
    from reverie.studio import Studio

    studio = Studio(device="cpu")
    outdir = tmp_path_factory.mktemp("grid")
    result = studio.run({"mode": "grid", "base": MINI, "seed": 11, "x": "cfg=2,7", "y": "prompt=apple,pear"}, outdir=outdir)
    return studio, result, outdir


def test_grid_cells_are_single_runs_bit_for_bit(mini_grid):
    studio, result, _ = mini_grid
    assert not result.interrupted and len(result.images) == 4
    apple_2, apple_7, pear_2, pear_7 = result.images
    for image, prompt, cfg in ((apple_2, "red apple, Noto emoji", 2), (apple_7, "red apple, Noto emoji", 7),
                               (pear_2, "red pear, Noto emoji", 2), (pear_7, "red pear, Noto emoji", 7)):
        single = studio.run(MINI | {"mode": "txt2img", "prompt": prompt, "cfg_scale": cfg, "n_samples": 1, "seed": 11})
        assert np.array_equal(pixels(single.images[0].image), pixels(image.image)), (prompt, cfg)
        assert image.metadata["settings"]["prompt"] == prompt and image.seed == 11
    # The prompt axis really changes what is encoded: the pear cells are other pictures.
    assert np.abs(pixels(pear_7.image) - pixels(apple_7.image)).mean() > 3


def test_each_cell_png_names_its_axis_values_and_is_made_again_with_from(mini_grid):
    studio, result, _ = mini_grid
    pear_7 = result.images[3]
    info = read_png_info(pear_7.path)
    assert info["reverie"]["grid"] == {"x": {"axis": "cfg", "value": "7", "label": "CFG scale: 7"},
                                       "y": {"axis": "prompt", "value": "pear", "label": "pear"}}
    assert info["reverie"]["settings"]["mode"] == "txt2img" and info["reverie"]["settings"]["cfg_scale"] == 7
    assert info["parameters"].startswith("red pear, Noto emoji\n") and "CFG scale: 7" in info["parameters"]
    again = studio.run(request_from_picture(pear_7.path))
    assert np.array_equal(pixels(again.images[0].image), pixels(Image.open(pear_7.path)))


def test_the_grid_is_columns_by_rows_of_cells_with_label_margins(mini_grid):
    _, result, outdir = mini_grid
    [sheet] = result.grids
    assert result.grid_path == sheet.path and sheet.path.parent == outdir / "grids"
    picture = Image.open(sheet.path).convert("RGB")
    w, h, gap = 64, 64, 2
    left, top = picture.width - (2 * w + gap), picture.height - (2 * h + gap)
    assert left > 20 and top > 10  # the row labels' margin, the column labels' margin
    for number, image in enumerate(result.images):
        row, col = divmod(number, 2)
        x, y = left + col * (w + gap), top + row * (h + gap)
        assert np.array_equal(pixels(picture.crop((x, y, x + w, y + h))), pixels(image.image)), number
    ink = pixels(picture) < 100
    for col in range(2):  # each column's label is written above it, each row's at its left
        assert ink[:top, left + col * (w + gap):left + col * (w + gap) + w].all(axis=-1).any()
    for row in range(2):
        assert ink[top + row * (h + gap):top + row * (h + gap) + h, :left].all(axis=-1).any()
    meta = read_png_info(sheet.path)["reverie"]
    assert meta["grid"]["columns"] == ["CFG scale: 2", "CFG scale: 7"] and meta["grid"]["rows"] == ["apple", "pear"]
    assert meta["settings"]["mode"] == "grid" and meta["grid"]["complete"]
    assert 'X Type: CFG scale, X Values: "2,7"' in read_png_info(sheet.path)["parameters"]


# -- sheets per z, stops and resumes (the tiny random model: only the mechanics) -------------------
def test_one_labelled_grid_per_z_value(studio, tmp_path):
    result = studio.grid(TINY, x="cfg=1,9", z="steps=2,3", seed=1, outdir=tmp_path)  # the Python API's shorthand
    assert len(result.images) == 4 and len(result.grids) == 2
    assert [sheet.metadata["grid"]["title"] for sheet in result.grids] == ["Steps: 2", "Steps: 3"]
    assert [image.metadata["settings"]["steps"] for image in result.images] == [2, 2, 3, 3]
    assert [image.index for image in result.images + result.grids] == list(range(6))
    assert len(list((tmp_path / "grids").glob("*.png"))) == 2
    one, two = (Image.open(sheet.path) for sheet in result.grids)
    assert one.size == two.size and one.width == 2 * 64 + 2 and one.height > 64 + 20  # no row labels; a title and column labels above


def test_a_cell_its_method_would_refuse_stops_the_grid_before_any_cell_runs(studio, tmp_path):
    """int8 runs where the model runs on OpenVINO without torch, which the tiny test model never
    does: the grid says which cell and why before making the first one."""
    with pytest.raises(BadRequest) as caught:
        studio.run({"mode": "grid", "base": TINY, "seed": 2, "x": "quantize=none,int8"}, outdir=tmp_path)
    assert caught.value.field == "quantize"
    assert "cell 2 (Quantize: int8) would be refused" in str(caught.value) and "leave quantize out" in str(caught.value)
    assert not any(tmp_path.rglob("*.png"))  # not even the first cell's picture


def test_a_stop_between_cells_keeps_the_finished_cells_and_a_partial_grid(studio, tmp_path):
    seen = []
    result = studio.run({"mode": "grid", "base": TINY, "seed": 2, "x": "cfg=1,5,9", "y": "seed=2,3"}, outdir=tmp_path,
                        progress=lambda event: seen.append(event), should_stop=lambda: sum(e.stage == "image" for e in seen) >= 2)
    assert result.interrupted and len(result.images) == 2 and len(list(tmp_path.glob("*.png"))) == 2
    [sheet] = result.grids
    assert not sheet.metadata["grid"]["complete"] and sheet.path.is_file()
    grey = pixels(sheet.image)[-64:, -64:]  # the last cell was not made
    assert (grey == 230).all()
    cells = [event for event in seen if event.stage == "cell"]
    assert cells[0].total == 6 and cells[-1].step == 2  # done/total


def test_a_resumed_grid_reports_only_what_it_did_not_make(studio, tmp_path):
    fields = {"mode": "grid", "base": TINY, "seed": 3, "x": "cfg=1,9", "y": "steps=2,3"}
    whole = studio.run(fields)
    resumed = studio.run(fields | {"made": 3}, outdir=tmp_path)
    assert [image.index for image in resumed.images] == [3]
    assert np.array_equal(pixels(resumed.images[0].image), pixels(whole.images[3].image))
    assert np.array_equal(pixels(resumed.grids[0].image), pixels(whole.grids[0].image))
    assert len(list(tmp_path.glob("*.png"))) == 1  # the made cells are not written again


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_grid_writes_cells_and_grids(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "grid", "a castle", "--x", "cfg=3,7", "--y", 'prompt=castle,"temple, old"',
                             "--model", "tiny-random", "--steps", "2", "-W", "64", "-H", "64", "--seed", "4",
                             "--outdir", str(tmp_path))
    assert code == 0, err
    assert len(list(tmp_path.glob("*.png"))) == 4 and len(list((tmp_path / "grids").glob("*.png"))) == 1
    assert "CFG scale: 7, temple, old" in out and "grid: " in out
    code, _, err = run_cli(monkeypatch, capsys, "grid", "a castle", "--x", "steps=2,many", "--model", "tiny-random")
    assert code == 2 and "x: steps value 'many'" in err


# -- the native API --------------------------------------------------------------------------------
def test_native_api_runs_a_grid_into_the_gallery(tmp_path):
    from test_server_api import make_client, wait_done

    with make_client(tmp_path) as client:
        base = {"prompt": "a lighthouse at dusk", "steps": 2, "width": 64, "height": 64}
        job = client.post("/api/v1/jobs", json={"mode": "grid", "base": base, "seed": 6, "x": "cfg=2,8", "y": "seed=6,7"})
        assert job.status_code == 202, job.json()
        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done" and len(done["images"]) == 5
        cells, sheet = done["images"][:4], done["images"][4]
        assert [cell["grid"]["x"]["label"] for cell in cells] == ["CFG scale: 2", "CFG scale: 8"] * 2
        assert [cell["seed"] for cell in cells] == [6, 6, 7, 7] and cells[0]["settings"]["mode"] == "txt2img"
        assert sheet["settings"]["mode"] == "grid" and sheet["grid"]["complete"]
        assert [i["id"] for i in client.get("/api/v1/gallery", params={"q": "lighthouse"}).json()]  # found by its prompt
        # The page's "re-run" of a cell makes that cell again, bit for bit.
        again = wait_done(client, client.post(f"/api/v1/images/{cells[3]['id']}/again").json()["id"])
        def picture(image):
            return np.asarray(Image.open(io.BytesIO(client.get(image["url"]).content)))

        assert np.array_equal(picture(again["images"][0]), picture(cells[3]))

        refused = client.post("/api/v1/jobs", json={"mode": "grid", "base": base, "x": "cfg=1,2,3", "y": "seed=1,2,3"})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "n_samples"  # 9 cells > 8 pictures
        wrong = client.post("/api/v1/jobs", json={"mode": "grid", "base": base, "x": "model=tiny-random,/etc/model.ckpt"})
        assert wrong.status_code == 422 and "unknown model '/etc/model.ckpt'" in wrong.json()["error"]["message"]
        path = client.post("/api/v1/jobs", json={"mode": "grid", "base": base | {"mode": "img2img", "init_image": "/etc/passwd"},
                                                 "x": "cfg=1,2"})
        assert path.status_code == 422 and path.json()["error"]["param"] == "base.init_image"
        bad = client.post("/api/v1/jobs", json={"mode": "grid", "base": base, "x": "cfg=1,zz"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "x"


def test_a_grid_costs_one_request_per_cell(tmp_path):
    from test_server_api import make_client

    with make_client(tmp_path, multi_user=True, first_month_credits=5, monthly_credits=5, start_worker=False) as client:
        gallery = client.app.state.studio.gallery
        user = gallery.add_user("gus", "pw")
        headers = {"Authorization": f"Bearer {gallery.new_api_key(user.id)}"}
        base = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
        assert client.post("/api/v1/jobs", json={"mode": "grid", "base": base, "x": "cfg=1,2", "y": "seed=1,2"},
                           headers=headers).status_code == 202
        assert gallery.balance(user.id) == 1
        refused = client.post("/api/v1/jobs", json={"mode": "grid", "base": base, "x": "cfg=1,2"}, headers=headers)
        assert refused.status_code == 402


def test_cli_grid_compares_strengths_on_a_picture(monkeypatch, capsys, tmp_path, photo):
    code, _, err = run_cli(monkeypatch, capsys, "grid", "a sunset", "-i", photo, "--x", "strength=0,0.9",
                             "--model", "tiny-random", "--steps", "2", "--seed", "4", "--outdir", str(tmp_path / "out"))
    assert code == 0, err
    kept, changed = sorted((tmp_path / "out").glob("*.png"))
    assert read_png_info(kept)["reverie"]["settings"]["mode"] == "img2img"
    assert np.array_equal(pixels(Image.open(kept)), pixels(Image.open(photo)))  # strength 0 keeps the picture
    assert np.abs(pixels(Image.open(changed)) - pixels(Image.open(photo))).mean() > 5
