"""Best of N: make more candidates, keep the ones the CLIP scores best, as DALL-E did."""

import numpy as np
import pytest

from reverie.errors import BadRequest
from reverie.methods.rerank import plain_prompt
from reverie.outputs.metadata import read_png_info
from reverie.studio import make_request, request_from_picture

MINI = dict(prompt="red apple, Noto emoji", steps=8, cfg_scale=4, upscale=1)


def test_plain_prompt_drops_the_attention_syntax():
    assert plain_prompt("(red:1.3) [apple], ((shiny)) BREAK Noto emoji") == "red apple, shiny Noto emoji"
    assert plain_prompt("a photo: portrait") == "a photo: portrait"


def test_rerank_keeps_the_best_of_all_candidates(studio, tmp_path):
    ranked = studio.generate(make_request(**MINI, seed=30, n_samples=2, rerank=3), outdir=tmp_path)
    every = studio.generate(make_request(**MINI, seed=30, n_samples=6, score=True))
    by_seed = {image.seed: image for image in every.images}
    assert sorted(by_seed) == list(range(30, 36))  # the candidates were seeds 30..35
    best_two = sorted(every.images, key=lambda image: image.score, reverse=True)[:2]
    assert [image.seed for image in ranked.images] == [image.seed for image in best_two]
    for kept in ranked.images:
        same = by_seed[kept.seed]
        assert np.array_equal(np.asarray(kept.image), np.asarray(same.image))  # its seed makes it again
        assert kept.score == pytest.approx(same.score, abs=1e-4)
    # the scores go into the PNG, and --from re-makes the kept picture by itself
    info = read_png_info(ranked.images[0].path)["reverie"]
    assert info["clip_score"] == pytest.approx(ranked.images[0].score, abs=1e-4) and info["scorer"] == "mini"
    request = request_from_picture(ranked.images[0].path)
    assert request.rerank == 1 and request.picture_count() == 1
    again = studio.generate(request)
    assert again.seeds == [ranked.images[0].seed]
    assert np.array_equal(np.asarray(again.images[0].image), np.asarray(ranked.images[0].image))


def test_the_scorer_prefers_the_picture_the_prompt_names():
    from pathlib import Path

    from PIL import Image

    from reverie.methods.rerank import Scorer
    from reverie.training.data.folder import read_square

    root = Path(__file__).resolve().parent.parent / "data/npm/node_modules/emoji-datasource-google/img/google/64"
    if not root.is_dir():
        pytest.skip("the npm art packages are not installed (npm ci --prefix data/npm)")
    apple, car = (Image.fromarray(read_square(root / name, 64)) for name in ("1f34e.png", "1f699.png"))
    wide_apple = Image.new("RGB", (384, 256), "white")  # any size and shape: the centre square is scored
    wide_apple.paste(apple.resize((256, 256)), (64, 0))
    scorer = Scorer.load("mini")
    for prompt, first in (("(red:1.2) apple, Noto emoji", 0), ("[blue] car", 1)):
        for pictures in ([apple, car], [wide_apple, car.resize((200, 200))]):
            scores = scorer.scores(pictures, prompt)
            assert scores[first] > scores[1 - first], (prompt, scores)


def test_a_stopped_rerank_keeps_the_best_finished_candidates(studio):
    batches_done = []

    def progress(event):
        if event.stage == "rerank" and event.step:
            batches_done.append(event.step)

    result = studio.generate(make_request(**MINI, seed=70, n_samples=2, rerank=4), progress=progress,
                             should_stop=lambda: len(batches_done) >= 2)
    assert result.interrupted and batches_done[-1] == 4  # two batches of two candidates were made
    assert len(result.images) == 2 and {i.seed for i in result.images} <= set(range(70, 74))


@pytest.mark.parametrize("fields, message", [
    ({"prompt": "x", "rerank": 0}, "rerank: "),
    ({"prompt": "x", "rerank": 17}, "rerank: "),
    ({"mode": "upscale", "init_image": "x.png", "rerank": 2}, "rerank: unknown field"),  # one picture: nothing to choose
])
def test_bad_rerank_names_the_field(fields, message):
    with pytest.raises(BadRequest) as error:
        make_request(**fields)
    assert message in str(error.value)


def test_choosing_needs_a_prompt(studio, photo):
    with pytest.raises(BadRequest, match="rerank.*prompt"):
        studio.generate(make_request(mode="variations", init_image=photo, prompt="", rerank=2, steps=2))


def test_an_unknown_scorer_is_reported_before_any_work(studio, tmp_path):
    from reverie.errors import ReverieError

    events = []
    with pytest.raises(ReverieError) as error:
        studio.generate(make_request(**MINI, seed=1, n_samples=1, rerank=2, scorer=str(tmp_path / "missing.pt")),
                        progress=events.append)
    assert "missing.pt" in str(error.value)
    assert [event.stage for event in events] == ["load"]  # no prompt encoded, no candidate made


def test_a_clip_trained_here_can_score_and_guide(tmp_path):
    """`reverie train clip` writes RUN/export; --scorer and --clip take that folder."""
    import torch
    from PIL import Image

    from reverie.methods.dreaming.guides import MiniClipGuide, load_guide
    from reverie.methods.rerank import Scorer
    from reverie.models.mini_clip import ImageEncoder, load_clip, save_clip

    torch.manual_seed(0)
    folder = tmp_path / "export"
    save_clip(ImageEncoder(), folder, half=False)
    guide = load_guide(str(folder))
    assert isinstance(guide, MiniClipGuide) and guide.name == str(folder)
    colours = [(255, 0, 0), (0, 0, 255)]
    pictures = [Image.new("RGB", (64, 64), colour) for colour in colours]
    scores = Scorer.load(str(folder)).scores(pictures, "(red) apple")
    pixels = torch.stack([torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).expand(3, 64, 64) / 127.5 - 1
                          for colour in colours])
    direct = load_clip(folder).similarity(pixels, ["red apple"])[:, 0]
    assert scores == pytest.approx(direct.tolist(), abs=1e-5)  # this folder's weights, not the built-in ones
    assert scores != pytest.approx(Scorer.load("mini").scores(pictures, "red apple"), abs=1e-3)
