"""The video method: walks, animations, stop and continue, the files it writes, its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, run_cli
from reverie.errors import BadRequest, OutOfMemory
from reverie.outputs.video import video_info

TINY = {"model": "tiny-random", "steps": 2, "width": 64, "height": 64, "upscale": 1}
MINI = {"model": "mini", "steps": 8, "upscale": 1}


def frames_of(run_dir) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted((run_dir / "frames").glob("*.png"))]


def frame_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture(scope="module")
def mini_walk(tmp_path_factory):
    """A seed-travel and prompt walk on reverie-mini, with its stops made alone on the torch
    pipeline the frames run on (run.py, called directly: `reverie generate` runs reverie-mini on
    its OpenVINO bundle, methods/diffusion/compiled.py)."""
    from reverie.methods.diffusion.run import run
    from reverie.outputs.files import Outputs
    from reverie.progress import Progress
    from reverie.studio import Studio, make_request

    studio = Studio(device="cpu")
    folder = tmp_path_factory.mktemp("walk")
    result = studio.video("walk", ["a red apple", "a green frog"], seeds=[1, 7], frames=9, keep_frames=True,
                          outdir=folder, **MINI)
    alone = [run(make_request({"prompt": prompt, "seed": seed, "n_samples": 1, "device": "cpu", **MINI}), studio.models,
                 Progress(), Outputs(folder / "alone")).images[0].image
             for prompt, seed in (("a red apple", 1), ("a green frog", 7))]
    return result, frames_of(result.run_dir), alone


def test_a_walks_first_and_last_frames_are_the_pictures_its_stops_make_alone(mini_walk):
    result, frames, (first, last) = mini_walk
    assert len(frames) == 9 and not result.interrupted
    assert np.array_equal(pixels(frames[0]), pixels(first))
    assert np.array_equal(pixels(frames[-1]), pixels(last))


def test_a_walks_stops_are_what_reverie_generate_draws(mini_walk, studio):
    """`reverie generate`'s pictures (reverie-mini on its OpenVINO bundle) are the walk's stops to
    the eye: the two paths' kernels round apart by a level here and there, and each path's bf16
    its own way (measured 29.4-37.7 dB; before the timestep's sinusoids were kept in f32 both
    computed the same wrong ones, and agreed over 35 dB while further from the fp32 picture)."""
    from conftest import psnr

    _, frames, _ = mini_walk
    for frame, (prompt, seed) in zip((frames[0], frames[-1]), (("a red apple", 1), ("a green frog", 7))):
        still = studio.generate({"prompt": prompt, "seed": seed, "n_samples": 1, **MINI}).images[0].image
        assert psnr(pixels(frame), pixels(still)) > 28


def test_a_walk_moves_in_small_steps_where_independent_pictures_jump(mini_walk):
    _, frames, (first, last) = mini_walk
    jumps = [frame_difference(a, b) for a, b in zip(frames, frames[1:])]
    independent = frame_difference(first, last)
    assert max(jumps) < 0.6 * independent, (jumps, independent)
    # ... and it does go somewhere: the frames between are neither stop.
    assert frame_difference(frames[4], first) > 0.2 * independent
    assert frame_difference(frames[4], last) > 0.2 * independent


def test_a_video_records_each_frame_and_the_settings_beside_and_inside_the_mp4(mini_walk):
    result, _, _ = mini_walk
    record = json.loads((result.run_dir / "video.json").read_text())
    assert record["status"] == "done" and record["frames_done"] == 9
    assert [frame["t"] for frame in record["frames"]] == [i / 8 for i in range(9)]
    assert record["frames"][0]["seed"] == 1 and record["frames"][-1]["seed"] == 7
    info = video_info(result.videos[0])
    assert (info.frames, info.fps) == (9, 12)
    assert info.metadata["settings"]["prompts"] == ["a red apple", "a green frog"]


def test_the_video_files_have_the_frames_and_fps_asked_for(studio, tmp_path):
    result = studio.video("walk", ["a castle", "a boat"], seeds=[3, 9], frames=4, fps=8, interpolate=2,
                          formats=["mp4", "gif", "webp"], outdir=tmp_path, **TINY)
    assert [path.suffix for path in result.videos] == [".mp4", ".gif", ".webp"]
    for path in result.videos:
        info = video_info(path)
        assert (info.frames, info.fps, info.width, info.height) == (4 + 3 * 2, 8, 64, 64), path
    assert not (result.run_dir / "frames").exists()  # not kept unless asked


def test_an_animation_with_zoom_1_and_strength_0_repeats_its_frame(studio, tmp_path):
    result = studio.video("animate", "0: a lighthouse", seed=5, frames=4, strength="0:(0)", zoom="0:(1.0)",
                          keep_frames=True, outdir=tmp_path, **TINY)
    first, *rest = frames_of(result.run_dir)
    assert len(rest) == 3 and all(np.array_equal(pixels(first), pixels(frame)) for frame in rest)


def test_an_animation_zooms_in(studio, tmp_path):
    """Strength 0 shows the camera alone: zoom 1.25 per frame enlarges the centre of the frame before."""
    result = studio.video("animate", "0: a lighthouse", seed=5, frames=2, strength="0:(0)", zoom="0:(1.25)",
                          keep_frames=True, outdir=tmp_path, **TINY)
    first, second = frames_of(result.run_dir)
    centre = first.resize((64, 64), Image.BICUBIC, box=(6.4, 6.4, 57.6, 57.6))  # 64 / 1.25 px shown whole
    assert frame_difference(second, centre) < frame_difference(second, first)


@pytest.mark.parametrize("settings", [
    {"motion": "animate", "prompts": ["0: a forest | 3: a city"], "zoom": "0:(1.05)", "angle": "0:(2)",
     "strength": "0:(0.6)", "cadence": 2, "frames": 7},
    {"motion": "walk", "prompts": ["a forest", "a city"], "frames": 5},
])
def test_a_stopped_video_continues_to_the_frames_it_would_have_made(studio, tmp_path, settings):
    whole, continued = made_whole_and_continued(studio, tmp_path, 3, **settings, seed=11, **TINY)
    assert not continued.interrupted and continued.frames == settings["frames"]
    assert [pixels(f).tolist() for f in frames_of(continued.run_dir)] == [pixels(f).tolist() for f in frames_of(whole.run_dir)]


def made_whole_and_continued(studio, tmp_path, stop_after: int, **settings):
    """The video made whole, and made again: stopped after `stop_after` frames (written as a video
    of those), then continued."""
    whole = studio.video(**settings, keep_frames=True, outdir=tmp_path / "whole")
    made = []
    stopped = studio.video(**settings, keep_frames=True, outdir=tmp_path / "stopped",
                           progress=lambda event: made.append(event.step) if event.stage == "frame" and event.step else None,
                           should_stop=lambda: len(made) >= stop_after)
    assert stopped.interrupted and stopped.frames == stop_after
    assert json.loads((stopped.run_dir / "video.json").read_text())["status"] == "stopped"
    assert video_info(stopped.videos[0]).frames == stop_after  # the frames made so far, as a video
    return whole, studio.video(continue_from=stopped.run_dir)


def test_an_animation_goes_on_longer_when_continued_with_more_frames(studio, tmp_path):
    settings = {"zoom": "0:(1.1)", "strength": "0:(0.5)", "seed": 2, "keep_frames": True, **TINY}
    longer = studio.video("animate", "0: a tower", frames=5, outdir=tmp_path / "a", **settings)
    short = studio.video("animate", "0: a tower", frames=3, outdir=tmp_path / "b", **settings)
    extended = studio.video(continue_from=short.run_dir, frames=5)
    assert extended.frames == 5
    assert [pixels(f).tolist() for f in frames_of(extended.run_dir)] == [pixels(f).tolist() for f in frames_of(longer.run_dir)]


def test_a_weight_that_changes_inside_a_prompt_paints_each_frame_with_its_value(studio, tmp_path):
    """A backquoted value is, on each frame, the prompt written with its value there."""
    settings = {"seed": 6, "frames": 3, "strength": "0:(0.6)", "keep_frames": True, **TINY}
    moving = studio.video("animate", "0: a lighthouse (fog:`0.5+t/2`)", outdir=tmp_path / "a", **settings)
    written = studio.video("animate", "0: a lighthouse (fog:0.5) | 1: a lighthouse (fog:1) | 2: a lighthouse (fog:1.5)",
                           prompt_blend=False, outdir=tmp_path / "b", **settings)
    records = json.loads((moving.run_dir / "video.json").read_text())["frames"]
    assert [record["prompt"] for record in records] == [f"a lighthouse (fog:{v})" for v in ("0.5", "1", "1.5")]
    assert [pixels(f).tolist() for f in frames_of(moving.run_dir)] == [pixels(f).tolist() for f in frames_of(written.run_dir)]
    assert not np.array_equal(pixels(frames_of(moving.run_dir)[1]), pixels(frames_of(moving.run_dir)[2]))


def test_latent_inbetweens_are_decoded_between_the_frames(studio, tmp_path):
    result = studio.video("walk", ["a castle", "a boat"], seed=3, frames=2, interpolate=1, interpolation="latent",
                          outdir=tmp_path, **TINY)
    assert video_info(result.videos[0]).frames == 3


@pytest.mark.parametrize("fields, field, words", [
    ({"motion": "walk", "prompts": ["only one"]}, "prompts", "two or more"),
    ({"motion": "walk", "prompts": ["a", "b", "c"], "seeds": [1, 2]}, "seeds", "one seed per prompt"),
    ({"motion": "animate", "prompts": ["0: a"], "zoom": "0:(1.02"}, "zoom", "character"),
    ({"motion": "animate", "prompts": ["0: a"], "angle": "0:(sin(t)+tt)"}, "angle", "tt"),
    ({"motion": "animate", "prompts": []}, "prompts", "give a prompt"),
    ({"motion": "dream", "prompts": ["0: a"], "dream": {"cutouts": 0}}, "dream.cutouts", ""),
    ({"motion": "dream", "prompts": ["0: a"], "dream": {"seed": 3}}, "dream.seed", "set by the video"),
])
def test_a_wrong_video_request_is_refused_naming_the_field(fields, field, words):
    from reverie.studio import make_request

    with pytest.raises(BadRequest) as caught:
        make_request({"mode": "video", **fields})
    assert caught.value.field == field and words in str(caught.value)


def test_a_video_that_cannot_fit_is_refused_before_its_first_frame(studio, tmp_path, monkeypatch):
    import reverie.device as device

    # One frame fits; a GIF and a WebP of 2000 frames, each with two in-between frames, hold 150 MB.
    monkeypatch.setattr(device, "available_memory", lambda _device: 100 * 2**20)
    with pytest.raises(OutOfMemory, match="GIF and WebP hold every frame"):
        studio.video("walk", ["a castle", "a boat"], seed=3, frames=2000, interpolate=2, formats=["gif", "webp"],
                     outdir=tmp_path, **TINY)
    [run_dir] = tmp_path.iterdir()
    assert not (run_dir / "frames").exists()


def test_the_estimate_is_reported_before_work(studio, tmp_path):
    events = []
    studio.video("walk", ["a castle", "a boat"], seed=3, frames=3, outdir=tmp_path, progress=events.append, **TINY)
    stages = [event.stage for event in events]
    assert stages.index("estimate") < stages.index("frame")
    estimate = next(event for event in events if event.stage == "estimate")
    assert "3 frames" in estimate.message and "6 UNet steps" in estimate.message and "GiB" in estimate.message


def test_cli_video_walk_writes_a_video_and_a_wrong_schedule_exits_2(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "video", "walk", "a castle", "a boat", "--frames", "3", "--model",
                             "tiny-random", "--steps", "2", "-W", "64", "-H", "64", "--seed", "4", "-o", str(tmp_path))
    assert code == 0, err
    assert "video:" in out and list(tmp_path.glob("*/video.mp4"))
    code, _, err = run_cli(monkeypatch, capsys, "video", "animate", "0: a castle", "--zoom", "0:(1.02), x:(1)",
                           "--model", "tiny-random", "-o", str(tmp_path))
    assert code == 2 and "zoom" in err and "character" in err


DREAM = {"motion": "dream", "prompts": ["0: red apple | 2: blue car"], "zoom": "0:(1.1)", "angle": "0:(5)",
         "first_iterations": 4, "iterations_per_frame": 2, "frames": 4,
         "dream": {"width": 64, "height": 64, "cutouts": 4, "prior": "none", "upscale": 1}}


def test_a_dream_video_moves_and_follows_its_timeline_and_continues_exactly(studio, tmp_path):
    whole, continued = made_whole_and_continued(studio, tmp_path, 2, **DREAM, seed=8)
    record = json.loads((whole.run_dir / "video.json").read_text())
    assert [frame["prompt"] for frame in record["frames"]][0].startswith("red apple")
    assert "blue car" in record["frames"][-1]["prompt"]
    assert video_info(whole.videos[0]).frames == 4
    assert continued.frames == 4
    assert [pixels(f).tolist() for f in frames_of(continued.run_dir)] == [pixels(f).tolist() for f in frames_of(whole.run_dir)]


def test_a_gan_walk_goes_from_seed_to_seed_through_the_gans_own_pictures(studio, tmp_path):
    import torch

    from reverie.models.gan import GANGenerator, save_gan

    torch.manual_seed(0)
    generator = GANGenerator(16, 16, 16, 2, [16, 16, 8], ["blue", "red"])
    generator.compute_w_mean()
    folder = save_gan(generator, tmp_path / "gan")
    walk = studio.video("walk", None, model=f"gan:{folder}", seeds=[3, 8], frames=5, keep_frames=True, outdir=tmp_path)
    frames = frames_of(walk.run_dir)
    alone = studio.run({"mode": "gan", "model": f"gan:{folder}", "seed": 3, "n_samples": 6}).images
    assert np.array_equal(pixels(frames[0]), pixels(alone[0].image))  # seed 3
    assert np.array_equal(pixels(frames[-1]), pixels(alone[5].image))  # seed 8
    with pytest.raises(BadRequest, match="no class 'green'"):
        studio.video("walk", ["blue", "green"], model=f"gan:{folder}", frames=3, outdir=tmp_path)
    with pytest.raises(BadRequest, match="motion"):
        studio.video("animate", "0: blue", model=f"gan:{folder}", frames=3, outdir=tmp_path)


def test_reverie_info_reads_a_videos_settings(monkeypatch, capsys, studio, tmp_path):
    result = studio.video("walk", ["a castle", "a boat"], seeds=[3, 9], frames=3, fps=6, formats=["mp4", "webp"],
                          outdir=tmp_path, **TINY)
    for video in result.videos:
        code, out, _ = run_cli(monkeypatch, capsys, "info", str(video))
        assert code == 0 and "3 frames at 6 fps, 64x64" in out and '"a castle"' in out


def test_a_video_run_again_in_its_own_folder_goes_on_from_its_frames(studio, tmp_path):
    """What the studio's job runner relies on: a job stopped with the server runs again in the same
    folder and makes only the frames it does not have."""
    fields = {"mode": "video", "motion": "animate", "prompts": ["0: a forest"], "zoom": "0:(1.05)", "frames": 5,
              "seed": 6, "keep_frames": True, **TINY}
    whole = studio.run(fields, run_folder=tmp_path / "whole")
    made = []
    studio.run(fields, run_folder=tmp_path / "job", progress=lambda e: made.append(e.step) if e.stage == "frame" else None,
               should_stop=lambda: len(made) >= 3)
    steps = []
    again = studio.run(fields, run_folder=tmp_path / "job", progress=lambda e: steps.append(e.step) if e.stage == "frame" else None)
    assert steps[0] == 2 and again.frames == 5  # it began at frame 2 (0-based): 0 and 1 were there
    assert [pixels(f).tolist() for f in frames_of(again.run_dir)] == [pixels(f).tolist() for f in frames_of(whole.run_dir)]
    events = []
    once_more = studio.run(fields | {"keep_frames": False}, run_folder=tmp_path / "done", progress=events.append)
    again = studio.run(fields | {"keep_frames": False}, run_folder=tmp_path / "done", progress=events.append)
    assert not (once_more.run_dir / "frames").exists() and again.videos == once_more.videos  # finished: reported
    assert [event.stage for event in events].count("frame") == 6 and [e.stage for e in events][-1] == "image"
    other = studio.run(fields | {"seed": 7}, run_folder=tmp_path / "job")  # another video: made anew there
    assert json.loads((other.run_dir / "video.json").read_text())["settings"]["seed"] == 7


def test_a_video_applies_the_loras_its_prompts_name(studio, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from test_lora import kohya_lora

    root = tmp_path / "models"
    (root / "Lora").mkdir(parents=True)
    monkeypatch.setenv("REVERIE_MODELS", str(root))
    save_file(kohya_lora(1), str(root / "Lora" / "inkA.safetensors"))
    settings = dict(seed=4, frames=2, keep_frames=True, **TINY)
    plain = studio.video("walk", ["a castle", "a boat"], outdir=tmp_path / "plain", **settings)
    zero = studio.video("walk", ["a castle <lora:inkA:0>", "a boat <lora:inkA:0>"], outdir=tmp_path / "zero", **settings)
    inked = studio.video("walk", ["a castle <lora:inkA:1>", "a boat <lora:inkA:1>"], outdir=tmp_path / "ink", **settings)
    assert [pixels(f).tolist() for f in frames_of(zero.run_dir)] == [pixels(f).tolist() for f in frames_of(plain.run_dir)]
    assert frame_difference(frames_of(inked.run_dir)[0], frames_of(plain.run_dir)[0]) > 1
    with pytest.raises(BadRequest, match="same LoRAs"):
        studio.video("walk", ["a castle <lora:inkA:1>", "a boat"], outdir=tmp_path / "mixed", **settings)
