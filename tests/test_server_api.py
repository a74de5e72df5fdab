"""The studio's HTTP APIs: native, A1111-compatible, OpenAI-compatible; queue, restart, users, credits."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from reverie.server.app import create_app
from reverie.server.config import ServerConfig

FAST = {"steps": 2, "width": 64, "height": 64}


def make_client(tmp_path, **config) -> TestClient:
    settings = dict(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu") | config
    return TestClient(create_app(ServerConfig(**settings)))


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def wait_done(client, job_id, headers=None, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def png_b64(array: np.ndarray, mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def picture(size=64, colour=(200, 30, 30)) -> np.ndarray:
    array = np.zeros((size, size, 3), np.uint8)
    array[:] = colour
    return array


# -- native API ---------------------------------------------------------------------------------
def test_native_job_gives_four_pictures_in_the_gallery(client, tmp_path):
    job = client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "n_samples": 4, "seed": 7, **FAST})
    assert job.status_code == 202 and job.json()["status"] in ("queued", "running")
    done = wait_done(client, job.json()["id"])
    assert done["status"] == "done" and [i["seed"] for i in done["images"]] == [7, 8, 9, 10]
    first = done["images"][0]
    file = client.get(first["url"])
    assert file.status_code == 200 and Image.open(io.BytesIO(file.content)).size == (64, 64)
    assert client.get(first["url"].replace("sig=", "sig=0")).status_code == 403
    assert [i["id"] for i in client.get("/api/v1/gallery", params={"q": "lighthouse"}).json()][:4]
    assert client.get("/api/v1/gallery", params={"q": "submarine"}).json() == []
    # The page's "re-run": a picture of a batch made again is the same picture, bit for bit.
    queued = client.post(f"/api/v1/images/{done['images'][1]['id']}/again")
    assert queued.status_code == 202
    again = wait_done(client, queued.json()["id"])
    assert [i["seed"] for i in again["images"]] == [8]
    picture = lambda image: np.asarray(Image.open(io.BytesIO(client.get(image["url"]).content)))  # noqa: E731
    assert np.array_equal(picture(again["images"][0]), picture(done["images"][1]))


def test_a_best_of_job_keeps_the_best_scored_candidates(client):
    job = client.post("/api/v1/jobs", json={"prompt": "a red apple", "n_samples": 2, "rerank": 3, "seed": 20, **FAST})
    done = wait_done(client, job.json()["id"])
    assert done["status"] == "done" and len(done["images"]) == 2
    scores = [image["score"] for image in done["images"]]
    assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
    assert all(20 <= image["seed"] < 26 for image in done["images"])  # two of the six candidates
    assert done["progress"]["fraction"] == 1.0


def test_delete_really_deletes(client, tmp_path):
    done = wait_done(client, client.post("/api/v1/jobs", json={"prompt": "a boat", "n_samples": 1, **FAST}).json()["id"])
    image = done["images"][0]
    files = list((tmp_path / "studio" / "images").rglob("*.png"))
    assert len(files) == 1
    assert client.delete(f"/api/v1/images/{image['id']}").status_code == 204
    assert not files[0].exists()
    assert client.get(f"/api/v1/images/{image['id']}").status_code == 404
    assert client.get(image["url"]).status_code == 404


def test_variations_and_inpaint_from_gallery_pictures(client):
    source = wait_done(client, client.post("/api/v1/jobs", json={"prompt": "a house", "n_samples": 1, **FAST}).json()["id"])["images"][0]
    variations = client.post("/api/v1/jobs", json={"mode": "variations", "init_image": f"image:{source['id']}", "n_samples": 2, "steps": 2})
    assert wait_done(client, variations.json()["id"])["status"] == "done"
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    inpaint = client.post("/api/v1/jobs", json={"mode": "inpaint", "prompt": "a red door", "init_image": f"image:{source['id']}",
                                                "mask_image": png_b64(mask, "L"), "n_samples": 1, "steps": 2})
    result = wait_done(client, inpaint.json()["id"])
    assert result["status"] == "done"
    before = np.asarray(Image.open(io.BytesIO(client.get(source["url"]).content)).convert("RGB"), np.int16)
    after = np.asarray(Image.open(io.BytesIO(client.get(result["images"][0]["url"]).content)).convert("RGB"), np.int16)
    assert np.array_equal(before[:8], after[:8])  # unmasked pixels stay


def test_progress_streams_as_server_sent_events(client):
    job = client.post("/api/v1/jobs", json={"prompt": "a tree", "n_samples": 1, **FAST}).json()
    events = []
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "done" and len(events[-1]["images"]) == 1
    assert all("progress" in e for e in events)


def test_cancel_a_queued_job(tmp_path):
    with make_client(tmp_path, start_worker=False) as client:
        job = client.post("/api/v1/jobs", json={"prompt": "x", **FAST}).json()
        assert client.delete(f"/api/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_lists_models_samplers_styles_and_the_openapi_schema(client):
    assert "tiny-random" in [m["name"] for m in client.get("/api/v1/models").json()]
    assert "euler_a" in [s["name"] for s in client.get("/api/v1/samplers").json()]
    assert "Noto emoji" in [s["name"] for s in client.get("/api/v1/styles").json()]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/sdapi/v1/sd-models",
                 "/sdapi/v1/samplers", "/sdapi/v1/options", "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
        assert path in paths


def test_styles_are_applied(client):
    job = client.post("/api/v1/jobs", json={"prompt": "a cat", "styles": ["Line icon"], **FAST, "n_samples": 1}).json()
    assert job["request"]["prompt"] == "a cat" and job["request"]["styles"] == ["Line icon"]
    image = wait_done(client, job["id"])["images"][0]
    assert image["prompt"] == "a cat, line icon"  # the gallery shows what was encoded
    own = client.get(f"/api/v1/images/{image['id']}").json()["picture_prompt"]
    assert own["template"] == "a cat" and own["negative_prompt"] == "colour"


@pytest.mark.parametrize("body, status, field", [
    ({"prompt": "x", "width": 65}, 422, "width"),
    ({"prompt": "x", "steps": 0}, 422, "steps"),
    ({"prompt": "x", "sampler": "nope"}, 422, "sampler"),
    ({"prompt": "x", "model": "/etc/passwd"}, 422, "model"),
    ({"prompt": "x", "colour": "red"}, 422, "colour"),
    ({"prompt": "x", "mode": "img2img", "init_image": "bm90IGFuIGltYWdl"}, 422, "init_image"),
    ({"prompt": "x", "mode": "img2img", "init_image": "image:0123"}, 422, "init_image"),
    ({"prompt": "x", "styles": ["No such look"]}, 422, "styles"),
    ({"prompt": "a {red|blue"}, 422, "prompt"),
    ({"prompt": "a __no_such_wildcard__"}, 422, "prompt"),
    ({"prompt": "x", "n_samples": 40}, 422, "n_samples"),
    ({"prompt": "x", "rerank": 17}, 422, "rerank"),
    ({"prompt": "x", "n_samples": 8, "rerank": 8}, 422, "rerank"),
    ({"prompt": "x", "scorer": "/etc/passwd"}, 422, "scorer"),  # the studio scores with the built-in CLIP only
    ({"prompt": "x", "decoder": "/tmp/taesd"}, 422, "decoder"),  # tiny: the models folder's, never a path
    ({"prompt": "x", "quantize": "int4"}, 422, "quantize"),
    ({"prompt": "x", "step_cache": 11}, 422, "step_cache"),
    ({"prompt": "x", "runtime": "tensorrt"}, 422, "runtime"),
    ({"prompt": "x", "quantize": "int8"}, 422, "quantize"),  # int8 runs without torch: the tiny model never does
    ({"mode": "grid", "base": {"prompt": "x", "quantize": "int8"}, "x": "cfg=1,2"}, 422, "quantize"),
    ({"prompt": "a (b"}, None, None),  # prompt syntax errors surface when the job runs
])
def test_bad_input_is_a_4xx_naming_the_field(client, body, status, field):
    response = client.post("/api/v1/jobs", json=body)
    if status is None:
        assert wait_done(client, response.json()["id"])["error"].startswith("prompt syntax error")
        return
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field and field in response.json()["error"]["message"]


def test_malformed_json_and_oversized_uploads(tmp_path):
    with make_client(tmp_path, max_upload_bytes=2000, start_worker=False) as client:
        response = client.post("/api/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["error"]["param"] == "body"
        noise = png_b64(np.random.default_rng(0).integers(0, 255, (64, 64, 3)))
        response = client.post("/api/v1/jobs", json={"mode": "img2img", "prompt": "x", "init_image": noise})
        assert response.status_code == 413 and response.json()["error"]["param"] == "init_image"


# -- queue: bound and restart -------------------------------------------------------------------
def test_full_queue_answers_429_with_retry_after(tmp_path):
    with make_client(tmp_path, queue_capacity=2, start_worker=False) as client:
        for _ in range(2):
            assert client.post("/api/v1/jobs", json={"prompt": "x", **FAST}).status_code == 202
        response = client.post("/api/v1/jobs", json={"prompt": "x", **FAST})
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1


def test_restart_in_the_middle_of_a_queue_loses_nothing(tmp_path):
    with make_client(tmp_path, start_worker=False) as client:
        ids = [client.post("/api/v1/jobs", json={"prompt": f"job {i}", "n_samples": 1, **FAST}).json()["id"] for i in range(3)]
        # The process "dies" while the first job runs.
        running = client.app.state.studio.gallery.claim_next()
        assert running.id == ids[0]
    with make_client(tmp_path) as client:  # the server comes back
        finished = [wait_done(client, job_id) for job_id in ids]
        assert [job["status"] for job in finished] == ["done"] * 3
        assert all(len(job["images"]) == 1 for job in finished)


# -- A1111 ---------------------------------------------------------------------------------------
def test_a1111_txt2img_and_img2img(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "negative_prompt": "", "seed": 5, "steps": 2,
                                                      "width": 64, "height": 64, "batch_size": 2, "n_iter": 1,
                                                      "sampler_name": "Euler a", "cfg_scale": 7, "restore_faces": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5, 6] and info["sampler_name"] == "euler_a" and "Seed: 5" in info["infotexts"][0]
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (64, 64)

    init = png_b64(picture())
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    response = client.post("/sdapi/v1/img2img", json={"prompt": "a fox", "init_images": [init], "mask": png_b64(mask, "L"),
                                                      "denoising_strength": 0.9, "steps": 2, "width": 64, "height": 64, "seed": 1})
    assert response.status_code == 200, response.text
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB"), np.int16)
    assert np.array_equal(result[:, :24], picture()[:, :24].astype(np.int16))  # unmasked half kept
    # No sampler asked for: the info names the one the model's defaults chose, as A1111 does.
    assert json.loads(response.json()["info"])["sampler_name"] == "dpmpp_2m_karras"


def test_a1111_listings_options_and_progress(client):
    assert "tiny-random" in [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert "Euler a" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "mini"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "mini"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "../../x"}).status_code == 422
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0


# -- OpenAI --------------------------------------------------------------------------------------
def test_openai_generations_b64_and_url(client):
    response = client.post("/v1/images/generations", json={"prompt": "a kite", "n": 2, "size": "64x64", "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2 and Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"]))).size == (64, 64)
    url = client.post("/v1/images/generations", json={"prompt": "a kite", "size": "64x64"}).json()["data"][0]["url"]
    assert url.startswith("http://testserver/files/") and client.get(url).status_code == 200


def test_openai_sizes_are_drawn_at_minis_own_size_and_upscaled(tmp_path):
    from reverie.server.api_openai import _base_size

    with make_client(tmp_path, default_model="mini") as mini:
        state = mini.app.state.studio
        assert [_base_size(state, size, None) for size in ("64x64", "128x128", "256x256", "512x512")] == [
            (64, 64, 1), (128, 128, 1), (128, 128, 2), (128, 128, 4)]
        # A model without a native size draws every size itself.
        assert _base_size(state, "256x256", "tiny-random") == (256, 256, 1)


def test_openai_edits_repaint_the_transparent_pixels(client):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = picture()
    rgba[..., 3] = 255
    rgba[:, 40:, 3] = 0  # transparent: repaint here
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    response = client.post("/v1/images/edits", files={"image": ("in.png", buffer.getvalue(), "image/png")},
                           data={"prompt": "a blue sky", "n": "1", "size": "64x64", "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))).convert("RGB"), np.int16)
    assert np.array_equal(out[:, :32], picture()[:, :32].astype(np.int16))


def test_openai_variations_and_errors(client):
    buffer = io.BytesIO()
    Image.fromarray(picture()).save(buffer, format="PNG")
    response = client.post("/v1/images/variations", files={"image": ("in.png", buffer.getvalue(), "image/png")},
                           data={"n": "2", "size": "64x64", "response_format": "b64_json"})
    assert response.status_code == 200 and len(response.json()["data"]) == 2
    bad = client.post("/v1/images/generations", json={"prompt": "x", "size": "100x100"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "size" and bad.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/images/generations", json={"prompt": "x", "n": 11}).json()["error"]["param"] == "n"
    not_image = client.post("/v1/images/variations", files={"image": ("x.png", b"hello", "image/png")})
    assert not_image.status_code == 422 and not_image.json()["error"]["param"] == "image"


# -- users, keys, credits -----------------------------------------------------------------------
@pytest.fixture
def multi(tmp_path, gallery_database):
    with make_client(tmp_path, multi_user=True, first_month_credits=2, monthly_credits=2, database=gallery_database) as client:
        gallery = client.app.state.studio.gallery
        ann, bob = gallery.add_user("ann", "ann-pw"), gallery.add_user("bob", "bob-pw")
        keys = {"ann": gallery.new_api_key(ann.id), "bob": gallery.new_api_key(bob.id)}
        yield client, gallery, {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}


def test_multi_user_needs_a_login_or_key(multi):
    client, _, _ = multi
    response = client.post("/api/v1/jobs", json={"prompt": "x", **FAST})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert client.post("/api/v1/jobs", json={"prompt": "x"}, headers={"Authorization": "Bearer rv-wrong"}).status_code == 401
    assert client.post("/api/v1/login", json={"username": "ann", "password": "nope"}).status_code == 401
    assert client.post("/api/v1/login", json={"username": "ann", "password": "ann-pw"}).status_code == 200
    assert client.get("/api/v1/me").json()["name"] == "ann"  # the session cookie
    basic = base64.b64encode(b"bob:bob-pw").decode()
    assert client.get("/sdapi/v1/options", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_users_see_only_their_own_gallery_and_jobs(multi):
    client, _, auth = multi
    job = client.post("/api/v1/jobs", json={"prompt": "ann's secret garden", "n_samples": 1, **FAST}, headers=auth["ann"]).json()
    done = wait_done(client, job["id"], auth["ann"])
    image_id = done["images"][0]["id"]
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=auth["bob"]).status_code == 404
    assert client.get(f"/api/v1/images/{image_id}", headers=auth["bob"]).status_code == 404
    assert client.delete(f"/api/v1/images/{image_id}", headers=auth["bob"]).status_code == 404
    assert client.get("/api/v1/gallery", headers=auth["bob"]).json() == []
    assert len(client.get("/api/v1/gallery", headers=auth["ann"]).json()) == 1
    other = client.post("/api/v1/jobs", json={"prompt": "x", "mode": "img2img", "init_image": f"image:{image_id}"}, headers=auth["bob"])
    assert other.status_code == 422 and other.json()["error"]["param"] == "init_image"


def test_credits_monthly_grant_charge_refusal_and_ledger(multi):
    client, gallery, auth = multi
    for _ in range(2):
        assert client.post("/api/v1/jobs", json={"prompt": "x", "n_samples": 1, **FAST}, headers=auth["ann"]).status_code == 202
    refused = client.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers=auth["ann"])
    assert refused.status_code == 402 and "not enough credit" in refused.json()["error"]["message"]
    assert client.get("/api/v1/me", headers=auth["ann"]).json()["credits"] == 0
    ann = gallery.user("ann")
    gallery.grant(ann.id, 3, "purchase", "test")
    assert client.get("/api/v1/me", headers=auth["ann"]).json()["credits"] == 3
    assert [e.reason for e in gallery.ledger(ann.id)] == ["monthly", "charge", "charge", "purchase"]


def test_a_cancelled_job_is_refunded(tmp_path, gallery_database):
    with make_client(tmp_path, multi_user=True, first_month_credits=1, monthly_credits=1, start_worker=False,
                     database=gallery_database) as client:
        gallery = client.app.state.studio.gallery
        user = gallery.add_user("cy", "pw")
        headers = {"Authorization": f"Bearer {gallery.new_api_key(user.id)}"}
        job = client.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers=headers).json()
        assert gallery.balance(user.id) == 0
        client.delete(f"/api/v1/jobs/{job['id']}", headers=headers)
        assert gallery.balance(user.id) == 1


def test_balance_is_exact_under_concurrent_requests(tmp_path, gallery_database):
    from reverie.gallery.store import Gallery, NoCredit

    gallery = Gallery(tmp_path / "g", database=gallery_database)
    user = gallery.add_user("dee", "pw")
    outcomes = []

    def spend():
        try:
            gallery.add_job(user.id, "generate", {}, capacity=1000, cost=1, monthly=7)
            outcomes.append("ok")
        except NoCredit:
            outcomes.append("refused")

    threads = [threading.Thread(target=spend) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 7 and outcomes.count("refused") == 13
    assert gallery.balance(user.id) == 0
    assert [e.reason for e in gallery.ledger(user.id)].count("monthly") == 1


def test_the_ledger_is_append_only(tmp_path, gallery_database):
    import sqlalchemy.exc
    from reverie.gallery.store import Gallery

    gallery = Gallery(tmp_path / "g", database=gallery_database)
    user = gallery.add_user("eve", "pw")
    gallery.grant(user.id, 5)
    for statement in ("UPDATE ledger SET amount = 500", "DELETE FROM ledger"):
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="append-only"):
            with gallery.engine.begin() as connection:
                connection.exec_driver_sql(statement)
    assert gallery.balance(user.id) == 5


def test_passwords_and_keys_are_stored_hashed(tmp_path):
    from reverie.gallery.store import Gallery

    gallery = Gallery(tmp_path / "g")
    user = gallery.add_user("fay", "correct horse")
    key = gallery.new_api_key(user.id)
    dump = b"".join(path.read_bytes() for path in (tmp_path / "g").glob("gallery.sqlite*"))
    assert b"correct horse" not in dump and key.encode() not in dump


def test_the_migrations_match_the_models(tmp_path, gallery_database):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from reverie.gallery.models import Base
    from reverie.gallery.store import Gallery

    gallery = Gallery(tmp_path / "g", database=gallery_database)
    with gallery.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_a_job_that_fails_halfway_keeps_its_finished_pictures(tmp_path):
    from reverie.progress import ProgressEvent
    from reverie.result import GeneratedImage

    class HalfwayStudio:
        """Makes one picture, then breaks, as a crash in the second batch would."""

        def run(self, request, *, outdir, progress, **_):
            outdir.mkdir(parents=True, exist_ok=True)
            path = outdir / "first.png"
            Image.fromarray(picture()).save(path)
            image = GeneratedImage(Image.open(path), 11, 0, {"seed": 11}, "")
            image.path = path
            progress(ProgressEvent("image", 1, 2, payload=image))
            raise RuntimeError("the second batch broke")

    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu")
    with TestClient(create_app(config, studio=HalfwayStudio())) as client:
        job = wait_done(client, client.post("/api/v1/jobs", json={"prompt": "x", "n_samples": 2, **FAST}).json()["id"])
        assert job["status"] == "failed" and "internal error" in job["error"]
        assert [image["seed"] for image in job["images"]] == [11]
        assert client.get(job["images"][0]["url"]).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "prior": "/etc/passwd"}, "prior"),  # the studio's prior is the built-in model or none
    ({"prompt": "x", "prior_weight": -1}, "prior_weight"),
    ({"prompt": "x", "smoothness": -1}, "smoothness"),
    ({"prompt": "x", "generator": "vqgan:/x.ckpt"}, "generator"),
])
def test_bad_dream_settings_are_a_4xx_naming_the_field(client, body, field):
    response = client.post("/api/v1/dreams", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field and field in response.json()["error"]["message"]


# -- inputs and limits (issue 16) -----------------------------------------------------------------
def _png(size=(64, 64), mode="RGB", colour=120) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_upload_is_refused_from_its_header_before_any_pixel_is_decoded(client):
    from fuzz_corpus import bomb_png, png_claiming

    # A header claiming 12000x12000 over almost no data: decoded first, it would be "not readable";
    # refused by its size, the header was read first. The real bomb (140 KB of compressed zeros
    # that decode to 144 MB) and Pillow's own limit (20000x20000) are refused the same way.
    for data, said in ((png_claiming(12000, 12000), "is 12000x12000; the largest accepted is 16777216 pixels"),
                       (bomb_png(12000, 12000), "is 12000x12000"), (png_claiming(20000, 20000), "decompression-bomb")):
        encoded, png = base64.b64encode(data).decode(), base64.b64encode(_png()).decode()
        responses = {
            "init_image": client.post("/api/v1/jobs", json={"prompt": "x", "mode": "img2img", "init_image": encoded}),
            "mask_image": client.post("/api/v1/jobs", json={"prompt": "x", "mode": "inpaint", "init_image": png, "mask_image": encoded}),
            "init_images": client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [encoded]}),
            "mask": client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png], "mask": encoded}),
            "image": client.post("/v1/images/edits", files={"image": ("a.png", data, "image/png")}, data={"prompt": "x"}),
        }
        responses["mask "] = client.post("/v1/images/edits", data={"prompt": "x"},
                                         files={"image": ("a.png", _png(mode="RGBA"), "image/png"), "mask": ("m.png", data, "image/png")})
        for field, response in responses.items():
            assert response.status_code == 422, (field, response.text)
            assert response.json()["error"]["param"] == field.strip() and said in response.json()["error"]["message"], response.text
    assert client.get("/api/v1/jobs").json() == []


def test_non_finite_numbers_are_refused_before_anything_is_queued_or_charged(tmp_path):
    with make_client(tmp_path, multi_user=True, monthly_credits=5) as client:
        gallery = client.app.state.studio.gallery
        user = gallery.add_user("nan", "pw")
        headers = {"Authorization": f"Bearer {gallery.new_api_key(user.id)}", "content-type": "application/json"}
        for path, body, field in (
            ("/sdapi/v1/txt2img", '{"prompt": "x", "restore_faces": NaN}', "restore_faces"),
            ("/sdapi/v1/txt2img", '{"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": Infinity}}',
             "override_settings.CLIP_stop_at_last_layers"),
            ("/sdapi/v1/txt2img", '{"prompt": "x", "cfg_scale": 1e999}', "cfg_scale"),
            ("/api/v1/jobs", '{"prompt": "x", "steps": -Infinity}', "steps"),
            ("/v1/images/generations", '{"prompt": "x", "user": [NaN]}', "user.0"),
        ):
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == 422 and response.json()["error"]["param"] == field, response.text
            assert "must be a finite number" in response.json()["error"]["message"]
        assert gallery.jobs(user.id) == [] and gallery.ledger(user.id) == []


def test_one_prompt_limit_for_every_api(tmp_path):
    from reverie.server.inputs import MAX_PROMPT_CHARS

    long = "x" * (MAX_PROMPT_CHARS + 1)
    with make_client(tmp_path, start_worker=False) as client:
        for path, body, field in (
            ("/api/v1/jobs", {"prompt": long}, "prompt"), ("/api/v1/jobs", {"prompt": "x", "negative_prompt": long}, "negative_prompt"),
            ("/api/v1/dreams", {"prompt": long}, "prompt"), ("/sdapi/v1/txt2img", {"prompt": long}, "prompt"),
            ("/sdapi/v1/txt2img", {"prompt": "x", "negative_prompt": long}, "negative_prompt"),
            ("/v1/images/generations", {"prompt": long}, "prompt"),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 422 and response.json()["error"]["param"] == field, (path, response.text)
        edits = client.post("/v1/images/edits", data={"prompt": long}, files={"image": ("a.png", _png(mode="RGBA"), "image/png")})
        assert edits.status_code == 422 and edits.json()["error"]["param"] == "prompt"
        assert client.post("/api/v1/jobs", json={"prompt": "x" * MAX_PROMPT_CHARS}).status_code == 202


def test_errors_name_the_fields_the_client_sent(client):
    png = base64.b64encode(_png()).decode()
    for path, body, field in (
        ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 9}, "batch_size"),  # past the studio's 8 pictures
        ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 65}, "batch_size"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "nope"}, "sampler_name"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}, "sd_model_checkpoint"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "styles": ["No such look"]}, "styles"),
        ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [png], "denoising_strength": 2}, "denoising_strength"),
        ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [png], "mask": png, "mask_blur": 100}, "mask_blur"),
        ("/v1/images/generations", {"prompt": "x", "n": 9}, "n"),
        ("/v1/images/generations", {"prompt": "x", "model": "nope"}, "model"),
    ):
        response = client.post(path, json=body)
        error = response.json()["error"]
        assert response.status_code == 422 and error["param"] == field and error["message"].startswith(f"{field}: "), response.text
        assert not re.search(r"\b(n_samples|init_image|mask_image|mask_mode)\b", error["message"]), error


def test_a_mask_of_another_size_is_refused_by_every_api(client):
    png, small = base64.b64encode(_png()).decode(), base64.b64encode(_png((32, 32), "L", 255)).decode()
    native = client.post("/api/v1/jobs", json={"prompt": "x", "mode": "inpaint", "init_image": png, "mask_image": small})
    a1111 = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png], "mask": small})
    openai = client.post("/v1/images/edits", data={"prompt": "x", "size": "64x64"},
                         files={"image": ("a.png", _png(mode="RGBA"), "image/png"), "mask": ("m.png", _png((32, 32), "RGBA"), "image/png")})
    for response, mask, image in ((native, "mask_image", "init_image"), (a1111, "mask", "init_images"), (openai, "mask", "image")):
        assert response.status_code == 422 and response.json()["error"]["param"] == mask, response.text
        assert response.json()["error"]["message"] == (
            f"{mask}: is 32x32 but {image} is 64x64; give a mask of the same size as the image")
    assert list((client.app.state.studio.gallery.uploads_dir).iterdir()) == []  # and nothing was kept of them


def test_uploads_are_deleted_when_their_job_ends_and_stale_ones_swept_at_start(tmp_path):
    import os

    png = base64.b64encode(_png()).decode()
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    with make_client(tmp_path) as client:
        uploads = client.app.state.studio.gallery.uploads_dir
        done = client.post("/api/v1/jobs", json={"mode": "img2img", "prompt": "x", "init_image": png, "n_samples": 1, "steps": 2})
        made = wait_done(client, done.json()["id"])
        assert made["status"] == "done"
        again = client.post(f"/api/v1/images/{made['images'][0]['id']}/again")  # its input is gone with its job
        assert again.status_code == 422 and again.json()["error"]["param"] == "image_id"
        response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png], "mask": png_b64(mask, "L"), "steps": 2,
                                                          "width": 64, "height": 64})
        assert response.status_code == 200
        failed = client.post("/api/v1/jobs", json={"mode": "img2img", "prompt": "a (b", "init_image": png, "n_samples": 1, "steps": 2})
        assert wait_done(client, failed.json()["id"])["status"] == "failed"
        assert list(uploads.iterdir()) == []
    with make_client(tmp_path, start_worker=False) as client:
        gallery = client.app.state.studio.gallery
        cancelled = client.post("/api/v1/jobs", json={"mode": "img2img", "prompt": "x", "init_image": png, "steps": 2}).json()
        assert len(list(uploads.iterdir())) == 1
        client.delete(f"/api/v1/jobs/{cancelled['id']}")
        assert list(uploads.iterdir()) == []
        waiting = client.post("/api/v1/jobs", json={"mode": "img2img", "prompt": "x", "init_image": png, "steps": 2}).json()
        [kept] = list(uploads.iterdir())
        other = client.post("/api/v1/jobs", json={"prompt": str(kept), **FAST}).json()
        client.delete(f"/api/v1/jobs/{other['id']}")
        assert kept.exists()  # a prompt that names an upload deletes nothing
        stale, fresh = gallery.save_upload(_png()), gallery.save_upload(_png())
        two_days_ago = time.time() - 2 * 86400
        for path in (kept, stale):
            os.utime(path, (two_days_ago, two_days_ago))
    with make_client(tmp_path, start_worker=False) as client:  # the server starts again
        # Old and named by no waiting job: swept. Named by the queued job, or fresh: kept.
        assert sorted(uploads.iterdir()) == sorted([kept, fresh])
        assert client.get(f"/api/v1/jobs/{waiting['id']}").json()["status"] == "queued"


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("GET", "/nope", None, {}, 404),
    ("POST", "/api/v1/nope", b"{}", {"content-type": "application/json"}, 404),
    ("PUT", "/api/v1/jobs", None, {}, 405),
    ("POST", "/api/v1/jobs", b"{nope", {"content-type": "application/json"}, 422),
    ("POST", "/api/v1/jobs", b'{"prompt": "x"}', {"content-type": "text/plain"}, 415),
    ("POST", "/sdapi/v1/txt2img", b'{"prompt": "x"}', {}, 415),
    ("POST", "/v1/images/edits", b"broken", {"content-type": "multipart/form-data"}, 400),  # no boundary
    ("POST", "/api/v1/jobs", b'{"prompt": "' + b"x" * (3 * 2000 + 2**20) + b'"}', {"content-type": "application/json"}, 413),
])
def test_routes_methods_and_bodies_answer_in_the_documented_shape(tmp_path, method, path, body, headers, status):
    with make_client(tmp_path, max_upload_bytes=2000, start_worker=False) as client:
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == status and error["message"] and response.json()["detail"] == error["message"]
        if status == 413:  # also when the body comes in chunks, with no Content-Length to refuse it by
            chunks = (b"x" * 65536 for _ in range(40))
            chunked = client.post(path, content=chunks, headers=headers)
            assert chunked.status_code == 413 and chunked.json()["error"]["param"] == "body"


def test_templates_combined_styles_and_combinations_through_the_apis(client):
    body = {"prompt": "a {cat|dog} face", "negative_prompt": "", "seed": 8, "steps": 2, "width": 64, "height": 64,
            "batch_size": 2, "styles": ["Line icon", "Pixel art"]}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "a {cat|dog} face"  # the template; each picture's own prompt below
    for prompt in info["all_prompts"]:
        assert re.fullmatch(r"a (cat|dog) face, line icon, pixel art, 8-bit, retro game sprite, limited palette, crisp pixels", prompt), prompt
    assert all("Template: a {cat|dog} face" in text for text in info["infotexts"])

    job = client.post("/api/v1/jobs", json={"prompt": "{red|blue|green} apple", "combinatorial": True, "n_samples": 2,
                                            **FAST}).json()
    done = wait_done(client, job["id"])
    assert sorted(image["prompt"] for image in done["images"]) == ["blue apple", "green apple", "red apple"]
    again = client.post(f"/api/v1/images/{done['images'][2]['id']}/again").json()
    remade = wait_done(client, again["id"])["images"]
    assert [image["prompt"] for image in remade] == [done["images"][2]["prompt"]]
    too_many = client.post("/api/v1/jobs", json={"prompt": "{a|b|c} {d|e|f}", "combinatorial": True, **FAST})
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "max_combinations"


def test_metrics_count_jobs_by_status_and_pictures_for_prometheus(client):
    def value(text: str, line: str) -> float:
        return float(next(row.split()[-1] for row in text.splitlines() if row.startswith(line + " ")))

    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    assert "# TYPE reverie_jobs gauge" in before.text and value(before.text, 'reverie_jobs{status="done"}') == 0
    wait_done(client, client.post("/api/v1/jobs", json={"prompt": "a kite", "n_samples": 2, "seed": 1, **FAST}).json()["id"])
    after = client.get("/metrics").text
    assert value(after, 'reverie_jobs{status="done"}') == 1 and value(after, 'reverie_jobs{status="queued"}') == 0
    assert value(after, "reverie_pictures_made") == 2 and value(after, "reverie_pictures_per_minute") == 2 / 5
    assert "a kite" not in after  # aggregates only
