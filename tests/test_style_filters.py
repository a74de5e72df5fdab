"""The style filters that teach reverie-mini its named looks, and the styled dataset they make."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from reverie.training.data.folder import read_splits
from reverie.training.data.style_filters import FILTERS, get_filter, stat_blockiness
from reverie.training.data.styled import build_styled, label_of, styled_captions


def emoji_like(kind: int, size: int = 64) -> Image.Image:
    """A flat, outlined shape on white, like the dataset's art (a red disc, a yellow face, a blue car)."""
    picture = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(picture)
    s = size / 64
    if kind == 0:
        draw.ellipse((12 * s, 12 * s, 52 * s, 52 * s), fill=(220, 40, 40), outline=(120, 20, 20), width=int(2 * s))
        draw.ellipse((20 * s, 18 * s, 28 * s, 26 * s), fill=(255, 200, 200))
    elif kind == 1:
        draw.ellipse((8 * s, 8 * s, 56 * s, 56 * s), fill=(250, 200, 40))
        draw.ellipse((22 * s, 24 * s, 28 * s, 32 * s), fill=(60, 40, 20))
        draw.ellipse((36 * s, 24 * s, 42 * s, 32 * s), fill=(60, 40, 20))
        draw.arc((20 * s, 28 * s, 44 * s, 48 * s), 20, 160, fill=(60, 40, 20), width=int(2 * s))
    else:
        draw.rounded_rectangle((6 * s, 26 * s, 58 * s, 44 * s), radius=int(6 * s), fill=(40, 90, 220))
        draw.rectangle((18 * s, 16 * s, 44 * s, 28 * s), fill=(120, 180, 240))
        draw.ellipse((12 * s, 38 * s, 24 * s, 50 * s), fill=(30, 30, 30))
        draw.ellipse((40 * s, 38 * s, 52 * s, 50 * s), fill=(30, 30, 30))
    return picture


PICTURES = [emoji_like(kind) for kind in range(3)]


def test_at_least_ten_looks_with_unique_names_and_words():
    assert len(FILTERS) >= 10
    assert len({f.name for f in FILTERS}) == len(FILTERS)
    assert len({f.words for f in FILTERS}) == len(FILTERS)
    assert get_filter("pixel-art").words == "pixel art"
    with pytest.raises(KeyError, match="pixel-art"):
        get_filter("no-such-look")


@pytest.mark.parametrize("look", FILTERS, ids=lambda f: f.name)
def test_each_look_moves_its_own_statistic(look):
    for picture in PICTURES:
        before, after = look.measure(picture), look.measure(look(picture, seed=3))
        assert (after - before) * look.direction > 0.02 * max(1.0, abs(before)), (look.name, before, after)


@pytest.mark.parametrize("look", FILTERS, ids=lambda f: f.name)
def test_each_look_is_deterministic_and_keeps_the_size(look):
    picture = PICTURES[1]
    first, again = look(picture, seed=7), look(picture, seed=7)
    assert first.size == picture.size and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(picture))
    big = look(emoji_like(1, 128), seed=7)  # sizes scale from 64 px
    assert big.size == (128, 128)


def test_pixel_art_is_blocky_and_few_coloured():
    sprite = np.asarray(get_filter("pixel-art")(PICTURES[0]))
    assert stat_blockiness(sprite / 255.0) > 0.99
    assert len(np.unique(sprite.reshape(-1, 3), axis=0)) <= 9  # 8 palette colours and the outline
    assert (sprite.reshape(16, 4, 16, 4, 3) == sprite.reshape(16, 4, 16, 4, 3)[:, :1, :, :1]).all()


def test_ink_sketch_is_black_on_paper():
    sketch = np.asarray(get_filter("ink-sketch")(PICTURES[2])).astype(float) / 255
    spread = sketch.max(-1) - sketch.min(-1)
    assert spread.max() < 0.1  # no colour
    assert (sketch.mean(-1) > 0.85).mean() > 0.5  # mostly paper
    assert (sketch.mean(-1) < 0.3).mean() > 0.03  # with ink


def test_styled_dataset_writes_originals_and_looks_with_their_words(tmp_path):
    source = tmp_path / "src"
    for i, picture in enumerate(PICTURES):
        folder = source / "train" / "noto"
        folder.mkdir(parents=True, exist_ok=True)
        picture.save(folder / f"thing{i}.png")
        (folder / f"thing{i}.txt").write_text(f"thing {i}, Noto emoji\nthing {i}\nthing {i} Noto emoji\n")
    manifest = build_styled(source, tmp_path / "styled", per_picture=2, seed=1)
    assert manifest["original"] == 3 and sum(manifest["styled"].values()) == 6
    train = read_splits(tmp_path / "styled", 64).train
    assert len(train) == 9
    by_folder = {}
    for path, lines in zip(train.paths, train.captions):
        by_folder.setdefault(path.relative_to(train.folder).parts[0], []).append((path, lines))
    assert [lines[0] for _, lines in by_folder["original"]] == ["thing 0, Noto emoji", "thing 1, Noto emoji", "thing 2, Noto emoji"]
    for name, entries in by_folder.items():
        if name == "original":
            continue
        look = get_filter(name)
        for path, lines in entries:
            label = f"thing {path.stem[-1]}"
            assert lines == styled_captions(label, look) and lines[0] == f"{label}, {look.words}"
    again = build_styled(source, tmp_path / "styled", per_picture=2, seed=1)  # the same call writes the same folder
    assert again == manifest
    assert json.loads((tmp_path / "styled" / "manifest.json").read_text())["looks"]["pixel-art"]["words"] == "pixel art"


def test_label_of_reads_the_bare_label():
    assert label_of(["red apple, Noto emoji", "red apple", "red apple Noto emoji"]) == "red apple"
    assert label_of(["just a caption"]) == "just a caption"


def test_a_resumed_denoiser_run_reads_its_latents_from_the_cache(tmp_path, monkeypatch):
    """Encoding a styled dataset takes minutes on a CPU; the run folder keeps the latents for a resume."""
    import torch

    from reverie.training import mini
    from reverie.training.autoencoder import build_autoencoder
    from reverie.training.data.folder import ImageCaptionFolder

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, picture in enumerate(PICTURES):
        picture.resize((16, 16)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"thing {i}\n")
    torch.manual_seed(0)
    vae = build_autoencoder(16, channels=(32, 32)).eval()
    vae_dir = tmp_path / "vae"
    vae.save_pretrained(vae_dir)
    train = ImageCaptionFolder(folder, 16)
    cache = tmp_path / "run" / mini.LATENT_CACHE
    first = mini.cached_latents(cache, vae, vae_dir, train)
    assert cache.is_file()
    calls = []
    monkeypatch.setattr(mini, "encode_all", lambda *a, **k: calls.append(1) or torch.zeros(1))
    assert torch.equal(mini.cached_latents(cache, vae, vae_dir, train), first) and not calls
    train.images[0] = 255 - train.images[0]  # other pictures: encoded again
    mini.cached_latents(cache, vae, vae_dir, train)
    assert calls == [1]
