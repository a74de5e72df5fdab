"""Dream videos: a dream that changes prompts (retarget) and moves (warp), frame by frame."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from checkpoint_layouts import write_biggan
from conftest import pixels
from reverie.errors import BadCheckpoint, BadRequest
from reverie.methods.dreaming import start_dream
from reverie.methods.dreaming.dream import centre_zoom
from reverie.methods.dreaming.prompts import DreamPrompt, format_dream_prompt, parse_dream_prompt
from reverie.methods.video.dreamed import DreamVideo, blended_prompt
from reverie.progress import Interrupted, Progress

SMALL = dict(width=64, height=64, cutouts=4, save_every=1000, prior="none")
TEXTS = ["red apple", "blue car"]


def test_retarget_steers_toward_the_new_prompt_and_records_it(tmp_path):
    dream = start_dream(dict(prompt="red apple", seed=0, **SMALL))
    for _ in range(15):
        dream.iterate()
    apple = dream.scores(TEXTS)
    assert apple[0] > apple[1]
    dream.retarget("blue car")
    assert [t.label for t in dream.targets] == ["blue car"] and dream.request.prompt == "blue car"
    for _ in range(25):
        dream.iterate()
    car = dream.scores(TEXTS)
    assert car[1] > car[0] and car[1] > apple[1] + 0.1
    dream.save(tmp_path)
    assert json.loads((tmp_path / "dream.json").read_text())["settings"]["prompt"] == "blue car"


def test_retarget_keeps_image_prompts_and_moves_the_prior(photo):
    dream = start_dream(dict(prompt="red apple", image_prompts=[f"{photo}:0.5"], generator="pixels", prior="mini",
                             seed=0, width=64, height=64, cutouts=4))
    picture_target = dream.targets[-1]
    unchanged = dream.targets
    dream.retarget("red apple")  # the same prompt: nothing changes
    assert dream.targets is unchanged
    dream.retarget("blue car | red:-0.5")
    assert [t.label for t in dream.targets] == ["blue car", "red", photo] and dream.targets[-1] is picture_target
    assert [p.weight for p in dream.prior.prompts] == [1.0, -0.5]
    car = dream.prior.prompts[0].cond
    dream.retarget("red apple")
    dream.retarget("blue car")  # encoded once, kept
    assert dream.prior.prompts[0].cond is car


def test_warp_restarts_from_the_moved_picture_with_a_fresh_optimizer():
    dream = start_dream(dict(prompt="red apple", generator="pixels", lr=1e-9, seed=0, **SMALL))
    dream.iterate()
    before = dream.picture()
    assert dream.optimizer.state
    dream.warp(ImageOps.mirror)
    assert not dream.optimizer.state  # the moments of the tensors before the move are gone
    expected = pixels(ImageOps.mirror(before))
    assert np.abs(pixels(dream.picture()) - expected).mean() < 2
    assert np.abs(pixels(before) - expected).mean() > 10 * np.abs(pixels(dream.picture()) - expected).mean()
    with pytest.raises(ValueError, match="keep the picture's size"):
        dream.warp(lambda picture: picture.resize((32, 32)))


def test_dream_prompts_round_trip_and_blend():
    for source in ["red apple", "a cozy cabin | oil painting:0.5 | blurry:-0.5", "sunset:2:0.8",
                   "photo: a red barn", "a:1:2:3", "football football galaxy"]:
        prompts = parse_dream_prompt(source)
        assert parse_dream_prompt(format_dream_prompt(prompts)) == prompts
    assert parse_dream_prompt(blended_prompt("red apple | blurry:-1", "blue car:2:0.5", 0.25)) == [
        DreamPrompt("red apple", 0.75), DreamPrompt("blurry", -0.75), DreamPrompt("blue car", 0.5, 0.5)]
    assert parse_dream_prompt("x")[0].stop == -math.inf


def _zoom_and_turn(index):
    """A frame's move: zoom in 10% and turn a little (what motion.py's moves do, by PIL)."""
    return lambda picture: centre_zoom(picture, 1.1).rotate(3 * index, Image.BICUBIC)


class StopAfter(Progress):
    def __init__(self, events: int):
        super().__init__(should_stop=lambda: self.seen >= events)
        self.seen = 0
        self.report = self._count

    def _count(self, _event):
        self.seen += 1


def test_a_continued_dream_video_makes_the_frames_an_uninterrupted_one_makes(tmp_path):
    settings = dict(seed=3, first_iterations=3, iterations_per_frame=2, **SMALL)
    timeline = [(0, "red apple"), (4, "blue car | green:0.5")]
    whole = DreamVideo(settings, timeline, _zoom_and_turn, tmp_path / "whole", blend=True)
    events = []
    frames = [whole.frame(i, Progress(report=events.append)) for i in range(6)]
    assert [(e.stage, e.step, e.total) for e in events[:4]] == [("dream", 1, 3), ("dream", 2, 3), ("dream", 3, 3),
                                                                 ("dream", 1, 2)]
    assert frames[0].size == (64, 64) and whole.dream.request.prompt == "blue car | green:0.5"
    assert whole.dream.step == 3 + 5 * 2

    split = DreamVideo(settings, timeline, _zoom_and_turn, tmp_path / "split", blend=True)
    first = [split.frame(i) for i in range(3)]
    split.save()
    with pytest.raises(Interrupted):  # stopped half way through frame 3: put back at frame 2's end
        split.frame(3, StopAfter(1))
    assert split.next_frame == 3 and split.dream.step == 3 + 2 * 2
    split.save()
    resumed = DreamVideo(settings, timeline, _zoom_and_turn, tmp_path / "split", blend=True)
    assert resumed.next_frame == 3 and resumed.dream.request.prompt == split.dream.request.prompt
    with pytest.raises(BadCheckpoint, match="the next frame it can make is 3, not 4"):
        resumed.frame(4)
    rest = [resumed.frame(i) for i in range(3, 6)]
    for made, expected in zip(first + rest, frames):
        assert np.array_equal(pixels(made), pixels(expected))
    assert np.abs(pixels(frames[5]) - pixels(frames[4])).mean() > 1  # the video moves


def test_a_generator_that_cannot_start_from_a_picture_cannot_move(tmp_path):
    folder = write_biggan(tmp_path / "biggan", output_dim=128, channel_width=16)
    settings = dict(generator=str(folder), seed=0, **SMALL)
    with pytest.raises(BadRequest, match="motion: the biggan generator cannot start from a moved picture"):
        DreamVideo(settings, [(0, "a dog")], _zoom_and_turn, tmp_path / "moving")
    still = DreamVideo(settings | dict(first_iterations=1, iterations_per_frame=1), [(0, "a dog"), (1, "a cat")],
                       None, tmp_path / "still")
    still.frame(0)
    still.frame(1)  # no motion: it dreams on toward the next prompt
    assert still.dream.request.prompt == "a cat"
    with pytest.raises(BadRequest, match="zoom: the biggan generator cannot start from a zoomed picture"):
        start_dream(dict(prompt="a dog", generator=str(folder), zoom=1.1, **SMALL))


def test_dream_video_settings_it_sets_itself_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sets iterations, prompt, zoom itself"):
        DreamVideo(dict(prompt="x", iterations=3, zoom=1.1), [(0, "a")], None, tmp_path)
    with pytest.raises(BadRequest, match="iterations_per_frame"):
        DreamVideo(dict(iterations_per_frame=0), [(0, "a")], None, tmp_path)
