"""Restyle (Deforum's video input): a video painted again frame by frame, from the CLI, the Python
API and the studio; stopped and continued; its refusals."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import pixels, run_cli
from reverie.errors import BadRequest
from reverie.outputs.video import read_frames, video_info, write_video
from test_video import TINY, frame_difference, frames_of, made_whole_and_continued

STILL = {"strength": "0:(0)", "noise": "0:(0)"}  # nothing painted: each frame is its input


def ball_at(x: int, size=(64, 64)) -> Image.Image:
    """A red ball 20 px wide, its left edge at `x`, on a blue field."""
    picture = Image.new("RGB", size, (40, 90, 200))
    ImageDraw.Draw(picture).ellipse((x, size[1] // 2 - 10, x + 20, size[1] // 2 + 10), fill=(230, 40, 40))
    return picture


def ball_video(path, frames: int = 7, size=(64, 64), fps: float = 10.0):
    """The ball crossing the field, left to right: a frame's place says which frame it is."""
    return write_video([ball_at(4 + index * (size[0] - 28) // max(1, frames - 1), size) for index in range(frames)],
                       path, fps=fps)


@pytest.fixture
def ball(tmp_path):
    return ball_video(tmp_path / "ball.mp4")


def test_strength_0_gives_back_every_nth_input_frame_at_the_inputs_rate(studio, tmp_path, ball):
    result = studio.video("restyle", "0: a lighthouse", video_input=str(ball), extract_every=2, frames=100,
                          keep_frames=True, outdir=tmp_path, **STILL, **TINY)
    source = read_frames(ball)
    made = frames_of(result.run_dir)
    assert result.frames == 4 and len(made) == 4  # frames 0, 2, 4, 6 of 7: at most what the input gives
    assert all(np.array_equal(pixels(frame), pixels(source[2 * i])) for i, frame in enumerate(made))
    info = video_info(result.videos[0])
    assert info.frames == 4 and info.fps == pytest.approx(5.0, abs=0.05)  # 10 fps over every 2nd frame
    records = json.loads((result.run_dir / "video.json").read_text())
    assert records["settings"]["seed_behavior"] == "fixed" and records["settings"]["colour_coherence"] == "none"


def test_a_restyle_left_without_a_frame_count_takes_every_frame_its_input_gives(studio, tmp_path):
    ball = ball_video(tmp_path / "ball.mp4", frames=30)  # more than another video's 24 by default
    assert studio.video("restyle", "0: a lighthouse", video_input=ball, outdir=tmp_path, **STILL, **TINY).frames == 30


@pytest.mark.parametrize("flow", ["none", "dis"])
def test_coherence_1_holds_the_first_painted_frame_or_carries_it_along_the_flow(studio, tmp_path, flow):
    """Coherence mixes the previous painted frame into the input: all of it. Unmoved, nothing
    moves; carried along the input's optical flow, it moves as the input does (the input a GIF,
    which Pillow decodes)."""
    ball = ball_video(tmp_path / "ball.gif")
    result = studio.video("restyle", "0: a lighthouse", video_input=ball, coherence="0:(0), 1:(1)", flow=flow,
                          keep_frames=True, outdir=tmp_path, **STILL, **TINY)
    source, (first, *rest) = read_frames(ball), frames_of(result.run_dir)
    assert len(rest) == 6 and np.array_equal(pixels(first), pixels(source[0]))
    if flow == "none":
        assert all(np.array_equal(pixels(first), pixels(frame)) for frame in rest)
    else:  # the ball crossed half the field, and its painted frame with it
        assert frame_difference(rest[-1], source[-1]) < 0.25 * frame_difference(rest[-1], source[0])


def test_a_painted_frame_follows_its_own_input_frame(studio, tmp_path):
    """reverie-mini paints each frame: the ball's frame 0 and last frame stay nearer their own input."""
    video = ball_video(tmp_path / "ball.mp4", frames=5, size=(160, 96))
    result = studio.video("restyle", "0: red apple, Noto emoji", video_input=str(video), seed=3, strength="0:(0.3)",
                          keep_frames=True, outdir=tmp_path, model="mini", steps=8, upscale=1)
    source, made = read_frames(video), frames_of(result.run_dir)
    assert made[0].size == (160, 96)  # the input's shape, at about the model's own area
    assert not np.array_equal(pixels(made[0]), pixels(source[0]))  # painted
    assert frame_difference(made[0], source[0]) < frame_difference(made[0], source[-1])
    assert frame_difference(made[-1], source[-1]) < frame_difference(made[-1], source[0])


def test_a_stopped_restyle_continues_to_the_frames_it_would_have_made(studio, tmp_path, ball):
    whole, continued = made_whole_and_continued(
        studio, tmp_path, 2, motion="restyle", prompts=["0: a forest | 3: a city"], video_input=str(ball), seed=4,
        strength="0:(0.6)", coherence="0:(0.3)", frames=5, **TINY)
    assert continued.frames == 5
    assert [pixels(f).tolist() for f in frames_of(continued.run_dir)] == [pixels(f).tolist() for f in frames_of(whole.run_dir)]


def test_a_restyle_keeps_its_inputs_sound_under_the_same_frames(studio, tmp_path):
    import subprocess

    import imageio_ffmpeg

    from reverie.outputs.video import has_sound

    clip = tmp_path / "clip.mp4"  # 10 frames at 10 fps over a second of a 440 Hz tone
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(clip)], check=True)
    settings = {"video_input": clip, "frames": 4, "extract_every": 2, **STILL, **TINY}
    sounding = studio.video("restyle", "0: a harbour", outdir=tmp_path / "a", **settings)
    silent = studio.video("restyle", "0: a harbour", sound=False, outdir=tmp_path / "b", **settings)
    assert has_sound(clip) and has_sound(sounding.videos[0]) and not has_sound(silent.videos[0])
    assert [pixels(f).tolist() for f in read_frames(sounding.videos[0])] == [pixels(f).tolist() for f in read_frames(silent.videos[0])]
    info = video_info(sounding.videos[0])
    assert info.metadata["settings"]["motion"] == "restyle" and info.fps == 5.0  # its settings kept; as long as the input


def test_a_style_network_paints_each_frame_and_coherence_carries_it_along_the_flow(studio, tmp_path):
    import torch

    from reverie.methods.style.fast import apply_style_network, style_network
    from reverie.models.style_network import StyleNetwork, StyleNetworkConfig, save_style_network

    torch.manual_seed(0)
    folder = save_style_network(StyleNetwork(StyleNetworkConfig(widths=(8, 8, 16), residual_blocks=1, size=32)),
                                tmp_path / "net")
    ball = ball_video(tmp_path / "ball.mp4")
    painted = studio.video("restyle", video_input=ball, network=str(folder), keep_frames=True, device="cpu",
                           outdir=tmp_path / "a")
    network = style_network(studio.models, str(folder), torch.device("cpu"))
    source, made = read_frames(ball), frames_of(painted.run_dir)
    assert len(made) == 7 and made[0].size == (64, 64)  # the input's size (under 512 px a side)
    assert all(np.array_equal(pixels(frame), pixels(apply_style_network(network, picture)))
               for frame, picture in zip(made, source))  # each the network's picture of its input frame
    held = frames_of(studio.video("restyle", video_input=ball, network=str(folder), coherence="0:(0), 1:(1)",
                                  keep_frames=True, device="cpu", outdir=tmp_path / "b").run_dir)
    assert np.array_equal(pixels(held[0]), pixels(made[0]))
    # It moved with the ball: away from the first frame, nearer the last (unmoved, it would be the first).
    assert 10 < frame_difference(held[-1], made[0]) and frame_difference(held[-1], made[-1]) < frame_difference(held[-1], made[0])


@pytest.mark.parametrize("fields, field, words", [
    ({"prompts": ["0: a"]}, "video_input", "give the video"),
    ({"prompts": ["0: a"], "video_input": "x.mp4", "zoom": "0:(1.02)"}, "zoom", "moves as its input does"),
    ({"prompts": ["0: a"], "video_input": "x.mp4", "cadence": 2}, "cadence", "every frame"),
    ({"prompts": ["0: a"], "video_input": "x.mp4", "motion": "animate"}, "video_input", "only motion restyle"),
    ({"prompts": ["0: a"], "video_input": "x.mp4", "flow": "raft"}, "flow", "'dis' or 'farneback'"),
    ({"prompts": ["0: a"], "video_input": "x.mp4", "network": "oils"}, "prompts", "without a prompt"),
    ({"prompts": ["0: a"], "network": "oils", "motion": "animate"}, "network", "motion restyle"),
])
def test_a_wrong_restyle_request_is_refused_naming_the_field(fields, field, words):
    from reverie.studio import make_request

    with pytest.raises(BadRequest) as caught:
        make_request({"mode": "video", "motion": "restyle", **fields})
    assert caught.value.field == field and words in str(caught.value)


def test_an_input_that_is_missing_short_or_not_a_video_is_refused_before_any_frame(studio, tmp_path):
    one_frame = ball_video(tmp_path / "one.mp4", frames=1)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    cases = [(tmp_path / "missing.mp4", "there is no video"), (one_frame, "a video needs two"),
             (corrupt, "could not be read as a video"), (tmp_path / "notes.txt", "give a video file")]
    for path, words in cases:
        with pytest.raises(BadRequest) as caught:
            studio.video("restyle", "0: a", video_input=str(path), outdir=tmp_path / "out", **TINY)
        assert caught.value.field == "video_input" and words in str(caught.value), (path, caught.value)
    assert not list((tmp_path / "out").glob("*/frames/*.png"))


def test_cli_video_restyle_writes_a_video_and_a_missing_input_exits_2(monkeypatch, capsys, tmp_path, ball):
    code, out, err = run_cli(monkeypatch, capsys, "video", "restyle", str(ball), "0: a harbour", "--frames", "3",
                             "--strength", "0:(0.5)", "--model", "tiny-random", "--steps", "2", "-W", "64", "-H", "64",
                             "--upscale", "1", "--format", "gif", "-o", str(tmp_path / "videos"))
    assert code == 0, err
    [video] = (tmp_path / "videos").glob("*/video.gif")
    assert video_info(video).frames == 3 and "video:" in out
    code, _, err = run_cli(monkeypatch, capsys, "video", "restyle", str(tmp_path / "nowhere.mp4"), "0: a harbour",
                           "--model", "tiny-random", "-o", str(tmp_path / "videos"))
    assert code == 2 and "video_input" in err and "there is no video" in err


def test_the_studio_restyles_a_video_of_the_users_gallery_and_no_path(tmp_path):
    from test_server_api import make_client, wait_done
    from test_video_studio import WALK

    with make_client(tmp_path) as client:
        walk = wait_done(client, client.post("/api/v1/jobs", json=WALK | {"frames": 4}).json()["id"])
        [item] = walk["images"]
        restyle = {key: value for key, value in WALK.items() if key not in ("frames", "fps")} | {
            "motion": "restyle", "prompts": ["0: an oil painting"], "video_input": f"image:{item['id']}",
            "frames": 50, "strength": "0:(0.5)"}
        job = client.post("/api/v1/jobs", json=restyle)
        assert job.status_code == 202, job.json()
        assert job.json()["request"]["frames"] == 4  # what the input gives, and what it is charged for
        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done", done["error"]
        assert done["images"][0]["video"] and done["images"][0]["settings"]["motion"] == "restyle"
        again = wait_done(client, client.post(f"/api/v1/images/{done['images'][0]['id']}/again").json()["id"])
        assert again["status"] == "done"  # its input is still in the gallery: it can be made again

        picture = wait_done(client, client.post("/api/v1/jobs", json={"prompt": "a cat", "model": "tiny-random", "steps": 2,
                                                                      "width": 64, "height": 64, "n_samples": 1}).json()["id"])
        for value, words in ((f"image:{picture['images'][0]['id']}", "is a picture"), (str(tmp_path / "x.mp4"), "image:ID"),
                             ("image:nope", "no video")):
            refused = client.post("/api/v1/jobs", json=restyle | {"video_input": value})
            assert refused.status_code == 422 and refused.json()["error"]["param"] == "video_input", refused.json()
            assert words in refused.json()["error"]["message"]


def test_the_studio_restyles_with_a_listed_style_network_and_no_path(tmp_path, monkeypatch):
    import torch

    from reverie.models.style_network import StyleNetwork, StyleNetworkConfig, save_style_network
    from test_server_api import make_client, wait_done

    torch.manual_seed(0)
    save_style_network(StyleNetwork(StyleNetworkConfig(widths=(8, 8, 16), residual_blocks=1, size=32)),
                       tmp_path / "models" / "oils")
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    with make_client(tmp_path) as client:
        assert any(model["name"] == "oils" and model["kind"] == "style" for model in client.get("/api/v1/models").json())
        restyle = {"mode": "video", "motion": "restyle", "network": "oils", "frames": 3,
                   "video_input": "data:video/mp4;base64," + base64.b64encode(ball_video(tmp_path / "b.mp4").read_bytes()).decode()}
        done = wait_done(client, client.post("/api/v1/jobs", json=restyle).json()["id"])
        assert done["status"] == "done", done["error"]
        assert done["images"][0]["video"] and done["images"][0]["settings"]["network"] == "oils"
        refused = client.post("/api/v1/jobs", json=restyle | {"network": str(tmp_path / "models" / "oils")})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "network"


def test_the_studio_restyles_an_uploaded_video_and_deletes_it_with_its_job(tmp_path, monkeypatch):
    from test_server_api import make_client, wait_done
    from test_video_studio import WALK

    encoded = lambda data: "data:video/mp4;base64," + base64.b64encode(data).decode()  # noqa: E731
    uploads = tmp_path / "studio" / "uploads"
    restyle = {key: value for key, value in WALK.items() if key not in ("frames", "fps")} | {
        "motion": "restyle", "prompts": ["0: an oil painting"], "strength": "0:(0.5)"}
    with make_client(tmp_path) as client:
        video = ball_video(tmp_path / "ball.mp4", frames=3).read_bytes()
        done = wait_done(client, client.post("/api/v1/jobs", json=restyle | {"video_input": encoded(video)}).json()["id"])
        assert done["status"] == "done", done["error"]
        assert done["request"]["frames"] == 3 and done["request"]["fps"] == 10.0
        assert not list(uploads.iterdir())  # the upload went with its job

        gif = ball_video(tmp_path / "ball.gif", frames=3).read_bytes()  # a GIF, read by Pillow
        done = wait_done(client, client.post("/api/v1/jobs", json=restyle | {"video_input": encoded(gif)}).json()["id"])
        assert done["status"] == "done" and done["request"]["frames"] == 3, done["error"]

        playlist = b"#EXTM3U\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
        many = ball_video(tmp_path / "many.gif", frames=30, size=(128, 128)).read_bytes()  # 491,520 pixels
        monkeypatch.setattr("reverie.server.state.PICTURE_VIDEO_PIXELS", 400_000)  # refused before a frame is decoded
        for data, words in ((playlist, "not an MP4"), (many, "30 frames of 128x128"),
                            (b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50, "could not be read as a video")):
            refused = client.post("/api/v1/jobs", json=restyle | {"video_input": encoded(data)})
            assert refused.status_code == 422 and refused.json()["error"]["param"] == "video_input", refused.json()
            assert words in refused.json()["error"]["message"]
        assert not list(uploads.iterdir())  # nor does a refused one stay
