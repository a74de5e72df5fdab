"""Videos in the studio: a video job through the native API into the gallery (a video with its
poster), what it costs, the studio's limits on it, and what a video item refuses."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image

from test_server_api import make_client, wait_done

WALK = {"mode": "video", "motion": "walk", "prompts": ["a forest at dawn", "a city at night"], "model": "tiny-random",
        "steps": 2, "width": 64, "height": 64, "upscale": 1, "frames": 3, "fps": 6, "seed": 11}


def test_a_video_job_lands_in_the_gallery_as_a_video_with_its_poster(tmp_path):
    from reverie.gallery.check import check_gallery
    from reverie.outputs.video import video_info

    with make_client(tmp_path) as client:
        job = client.post("/api/v1/jobs", json=WALK)
        assert job.status_code == 202, job.json()
        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done", done["error"]
        assert done["progress"]["total"] == 3 and done["progress"]["step"] == 3  # a video's steps are its frames
        [item] = done["images"]
        assert item["video"] is True and item["content_type"] == "video/mp4" and (item["width"], item["height"]) == (64, 64)
        assert item["settings"]["mode"] == "video" and item["settings"]["frames"] == 3
        assert item["prompt"] == "a forest at dawn | a city at night"  # found by its prompts
        assert [i["id"] for i in client.get("/api/v1/gallery", params={"q": "city"}).json()] == [item["id"]]
        folder = tmp_path / "studio" / "images"
        stored = sorted(p.relative_to(folder).as_posix().split("/", 1)[1] for p in folder.rglob("*") if p.is_file())
        assert stored == [f"{done['id']}-0.mp4", f"{done['id']}-0.png"]

        video = client.get(item["url"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        played = tmp_path / "got.mp4"
        played.write_bytes(video.content)
        info = video_info(played)
        assert info.frames == 3 and (info.width, info.height) == (64, 64)
        poster = client.get(item["poster_url"])
        assert poster.headers["content-type"] == "image/png" and Image.open(io.BytesIO(poster.content)).size == (64, 64)
        assert client.get(item["url"].replace(".mp4?", ".gif?")).status_code == 404  # not a file it has
        assert client.get(item["url"].replace("sig=", "sig=0")).status_code == 403
        assert check_gallery(tmp_path / "studio").ok  # the poster and its video are one item

        # Re-run makes the same video from its settings; actions on a video are refused.
        again = wait_done(client, client.post(f"/api/v1/images/{item['id']}/again").json()["id"])
        assert again["status"] == "done" and again["images"][0]["video"]
        assert client.get(again["images"][0]["poster_url"]).content == poster.content
        refused = client.post(f"/api/v1/images/{item['id']}/actions/vary_subtle")
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "image_id"
        assert "video" in refused.json()["error"]["message"]

        # Its poster starts an animation like any gallery picture (image:ID).
        assert client.post("/api/v1/jobs", json=WALK | {"motion": "animate", "prompts": ["0: a forest | 2: a city"],
                                                        "init_image": f"image:{item['id']}", "frames": 2}).status_code == 202

        # Deleting the item deletes the video and its poster.
        assert client.delete(f"/api/v1/images/{item['id']}").status_code == 204
        assert not list(folder.rglob(f"{done['id']}-0.*"))
        assert client.get(item["poster_url"]).status_code == 404


def test_a_video_is_charged_one_request_per_eight_frames(tmp_path):
    with make_client(tmp_path, multi_user=True, first_month_credits=5, monthly_credits=5, start_worker=False) as client:
        gallery = client.app.state.studio.gallery
        user = gallery.add_user("vera", "pw")
        headers = {"Authorization": f"Bearer {gallery.new_api_key(user.id)}"}
        assert client.post("/api/v1/jobs", json=WALK | {"frames": 17}, headers=headers).status_code == 202
        assert gallery.balance(user.id) == 5 - math.ceil(17 / 8)
        assert client.post("/api/v1/jobs", json=WALK, headers=headers).status_code == 202  # 3 frames: one request
        assert gallery.balance(user.id) == 1
        assert client.post("/api/v1/jobs", json=WALK | {"frames": 9}, headers=headers).status_code == 402


@pytest.mark.parametrize("fields, param, words", [
    ({"frames": 121}, "frames", "at most 120 frames"),
    ({"frames": 40, "interpolate": 3}, "frames", "157"),  # in-between frames count
    ({"motion": "dream", "prompts": ["0: a forest"], "dream": {"generator": "/etc/passwd"}}, "dream.generator", "mini"),
    ({"motion": "dream", "prompts": ["0: a forest"], "dream": {"guides": ["mini", "/models/clip.pt"]}}, "dream.guides", "mini"),
    ({"motion": "dream", "prompts": ["0: a forest"], "dream": {"image_prompts": ["/etc/hosts"]}}, "dream.image_prompts", "studio"),
    ({"frames": 100, "steps": 80}, "steps", "6000 denoising steps"),
    ({"motion": "dream", "prompts": ["0: a forest"], "frames": 100, "iterations_per_frame": 60}, "iterations_per_frame",
     "5000 dream iterations"),
    ({"continue_from": "/tmp/some-video"}, "continue_from", ""),
    ({"prompts": ["x" * 4001, "y"]}, "prompts", "4000"),
    ({"model": "/etc/model.ckpt"}, "model", "unknown model"),
])
def test_the_studio_holds_videos_to_its_limits(tmp_path, fields, param, words):
    with make_client(tmp_path, start_worker=False) as client:
        refused = client.post("/api/v1/jobs", json=WALK | fields)
        assert refused.status_code == 422, refused.json()
        assert refused.json()["error"]["param"] == param and words in refused.json()["error"]["message"]
        assert client.get("/api/v1/jobs").json() == []  # nothing queued
