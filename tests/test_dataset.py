"""The training dataset: built from the pinned npm art, split by concept, readable as a plain folder."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from reverie.training.data import DatasetError, ImageCaptionFolder, build_dataset, list_entries, read_splits
from reverie.training.data.build import captions_for, in_test_split
from reverie.training.data.sources import SOURCES, normalize_hexcode

NODE_MODULES = Path(__file__).resolve().parents[1] / "data" / "npm" / "node_modules"
needs_npm = pytest.mark.skipif(not NODE_MODULES.is_dir(),
                               reason=f"npm art packages not installed in {NODE_MODULES}: run `npm ci --prefix data/npm`")

# The documented counts (docs/dataset.md) for the pinned packages with the default options
# (no flags, test_fraction 0.1, seed 0). They do not depend on the picture size.
COUNTS = {
    "noto": {"train": 1467, "test": 169},
    "twemoji": {"train": 1467, "test": 169},
    "fluent": {"train": 1422, "test": 165},
    "tabler": {"train": 2321, "test": 262},
}
SPLITS = {"train": 6677, "test": 765}
CONCEPTS = {"total": 4219, "train": 3788, "test": 431}
SIZE = 32


def concept_of(png: Path) -> str:
    """The concept id a built file shows, from its path: emoji files start with the hexcode."""
    source, stem = png.parent.name, png.stem
    return f"tabler:{stem}" if source == "tabler" else stem.split("_")[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset") / f"mini-{SIZE}"
    calls = []
    manifest = build_dataset(NODE_MODULES, out, size=SIZE, progress=lambda done, total: calls.append((done, total)))
    return out, manifest, calls


@needs_npm
def test_counts_are_the_documented_ones(built):
    out, manifest, calls = built
    assert {name: {k: s[k] for k in ("train", "test")} for name, s in manifest["sources"].items()} == COUNTS
    assert manifest["splits"] == SPLITS and manifest["images"] == sum(SPLITS.values())
    assert manifest["concepts"] == CONCEPTS and len(manifest["test_concepts"]) == CONCEPTS["test"]
    assert manifest["size"] == SIZE
    assert manifest["sources"]["noto"]["native_size"] == 64 and manifest["sources"]["noto"]["resampled"] is True
    assert manifest["sources"]["fluent"]["native_size"] == "vector"
    assert manifest["packages"] == {"@iconify-json/fluent-emoji-flat": "1.2.6", "@iconify-json/tabler": "1.2.41",
                                    "emoji-datasource-google": "16.0.0", "emoji-datasource-twitter": "16.0.0",
                                    "emojibase-data": "17.0.0"}
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    for source, counts in COUNTS.items():
        for split, n in counts.items():
            assert len(list((out / split / source).glob("*.png"))) == n
            assert len(list((out / split / source).glob("*.txt"))) == n
    total = sum(SPLITS.values())
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) == total + 1


@needs_npm
def test_split_is_by_concept_and_the_same_for_every_source(built):
    out, manifest, _ = built
    by_split = {split: {concept_of(p) for p in (out / split).rglob("*.png")} for split in ("train", "test")}
    assert not by_split["train"] & by_split["test"]
    assert sorted(by_split["test"]) == manifest["test_concepts"]
    assert all(in_test_split(c, 0.1) for c in by_split["test"]) and not any(in_test_split(c, 0.1) for c in by_split["train"])
    # a held-out emoji is held out in every source that draws it
    noto_test = {concept_of(p) for p in (out / "test" / "noto").glob("*.png")}
    assert {concept_of(p) for p in (out / "test" / "twemoji").glob("*.png")} == noto_test
    assert {concept_of(p) for p in (out / "test" / "fluent").glob("*.png")} <= noto_test


@needs_npm
def test_pictures_are_rgb_of_the_size_with_captions_ending_in_their_style(built):
    out, _, _ = built
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == sum(SPLITS.values())
    for png in pngs:
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE), png
        lines = png.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
        style = SOURCES[png.parent.name].style
        assert lines and all(line.strip() for line in lines), png
        assert lines[0].endswith(", " + style), png
        for line in lines:
            assert line.replace(style, "").lower() == line.replace(style, ""), line  # lowercase but the style
    apple = out / ("test" if in_test_split("1f34e", 0.1) else "train") / "noto" / "1f34e_red-apple"
    assert apple.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0] == "red apple, Noto emoji"
    with Image.open(apple.with_suffix(".png")) as im:
        assert im.getpixel((0, 0)) == (255, 255, 255)  # transparency went onto white


@needs_npm
def test_attribution_names_every_licence_and_author(built):
    text = (built[0] / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for needle in ("Apache-2.0", "CC-BY-4.0", "MIT", "Google", "Twitter", "jdecked/twemoji", "Microsoft", "Paweł Kuna",
                   "emojibase", "creativecommons.org/licenses/by/4.0"):
        assert needle in text


@needs_npm
@pytest.mark.slow
def test_building_twice_gives_identical_files(built, tmp_path):
    out, manifest, _ = built
    again = build_dataset(NODE_MODULES, tmp_path / "again", size=SIZE)
    assert again == manifest

    def digest(root: Path) -> dict:
        return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    assert digest(tmp_path / "again") == digest(out)


@needs_npm
def test_sources_leave_out_skin_tones_components_and_flags_unless_asked():
    for source in ("noto", "twemoji", "fluent"):
        entries = list_entries(source, NODE_MODULES)
        assert not [e for e in entries if {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"} & set(e.concept_id.split("-"))]
        assert not [e for e in entries if e.group in ("component", "flags")]
    assert len(list_entries("noto", NODE_MODULES, include_flags=True)) == 1636 + 270
    assert len(list_entries("fluent", NODE_MODULES, include_flags=True)) == 1587 + 8
    tabler = {e.concept_id for e in list_entries("tabler", NODE_MODULES)}
    assert "tabler:apple" in tabler and "tabler:message" in tabler
    assert not {"tabler:message-2", "tabler:apple-filled", "tabler:bell-off", "tabler:brand-github"} & tabler
    # the mirrored alias (no code point in chars.json) is still drawn, pointing the other way
    fluent = {e.concept_id: e for e in list_entries("fluent", NODE_MODULES)}
    left, right = (np.asarray(fluent[c].image(32), dtype=np.int16) for c in ("1f448", "1f449"))
    assert np.abs(left[:, ::-1] - right).mean() < 0.5 < np.abs(left - right).mean()  # equal up to anti-aliasing


@needs_npm
def test_folder_reads_the_built_dataset(built):
    out, _, _ = built
    train = ImageCaptionFolder(out, SIZE, split="train")
    assert len(train) == SPLITS["train"] and train.skipped == 0
    assert train.images.shape == (SPLITS["train"], 3, SIZE, SIZE) and train.images.dtype == torch.uint8
    i = 123
    assert train.captions[i] == train.paths[i].with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    with Image.open(train.paths[i]) as im:
        assert torch.equal(train.images[i], torch.from_numpy(np.array(im)).permute(2, 0, 1))
    picks = {train.random_caption(i, random.Random(s)) for s in range(40)}
    assert picks <= set(train.captions[i]) and len(picks) > 1
    assert len(ImageCaptionFolder(out, 16, split="test")) == SPLITS["test"]


def test_folder_reads_a_hand_made_folder(tmp_path):
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)  # wide: scaled to 32x16, then center-cropped to 16x16
    rgba[:, 10:30] = (200, 0, 0, 255)  # an opaque red middle, transparent sides (which the crop removes) ...
    rgba[:10, 10:20] = 0  # ... and a transparent top-left quarter of what is kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cat.png")
    (tmp_path / "cat.txt").write_text("a red cat\n\n  sleeping cat  \n", encoding="utf-8")
    (tmp_path / "more").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "more" / "dog.jpg")  # no caption: skipped

    folder = ImageCaptionFolder(tmp_path, 16)
    assert len(folder) == 1 and folder.skipped == 1
    assert folder.captions == [["a red cat", "sleeping cat"]]
    assert folder.images.shape == (1, 3, 16, 16) and folder.images.dtype == torch.uint8
    assert folder.images[0, :, 12, 12].tolist() == [200, 0, 0]
    assert folder.images[0, :, 2, 2].tolist() == [255, 255, 255]  # transparency is white
    assert folder.random_caption(0, np.random.default_rng(0)) in folder.captions[0]
    assert folder.random_caption(0, torch.Generator().manual_seed(0)) in folder.captions[0]
    assert folder.random_caption(0) in folder.captions[0]


def test_folder_without_captioned_pictures_is_a_clear_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    with pytest.raises(DatasetError, match="no captioned pictures.*1 picture"):
        ImageCaptionFolder(tmp_path, 8)
    with pytest.raises(DatasetError, match="split folder 'train'"):
        ImageCaptionFolder(tmp_path, 8, split="train")


def captioned(folder: Path, name: str, caption: str | None, colour="red", size=(8, 8)) -> Path:
    """A picture (and its caption file unless caption is None) at folder/name."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return path


def test_a_plain_folder_is_all_training_pictures_and_a_built_one_is_split(tmp_path):
    plain = tmp_path / "plain"  # as people keep LoRA / DreamBooth folders: flat or nested, .txt beside each picture
    captioned(plain, "cat.png", "a cat")
    captioned(plain, "dogs/dog.JPG", "a dog")
    captioned(plain, "train/locomotive.webp", "a steam train")  # a subfolder that happens to be called train
    captioned(plain, "uncaptioned.png", None)
    captioned(plain, ".ipynb_checkpoints/cat-checkpoint.png", "not a picture of the dataset")
    (plain / "._cat.png").write_bytes(b"\0\5\26\7")  # macOS metadata beside the picture
    train, test = read_splits(plain, 8)
    assert test is None and train.folder == plain
    assert [p.relative_to(plain).as_posix() for p in train.paths] == ["cat.png", "dogs/dog.JPG", "train/locomotive.webp"]
    assert train.skipped == 1 and [train.top_folder(i) for i in range(3)] == ["", "dogs", "train"]
    pictures_only, _ = read_splits(plain, 8, need_captions=False)
    assert len(pictures_only) == 4 and pictures_only.captions[-1] == []

    built = tmp_path / "built"  # reverie data build's layout
    captioned(built, "train/noto/apple.png", "apple")
    captioned(built, "test/noto/pear.png", "pear")
    (built / "manifest.json").write_text("{}", encoding="utf-8")
    train, test = read_splits(built, 8)
    assert [p.name for p in train.paths] == ["apple.png"] and [p.name for p in test.paths] == ["pear.png"]
    assert train.top_folder(0) == "noto"
    (built / "test" / "noto" / "pear.png").unlink()  # nothing held out (test_fraction 0): no test split
    assert read_splits(built, 8).test is None

    by_hand = tmp_path / "by-hand"  # train/ and test/ alone, without a manifest: the same split layout
    captioned(by_hand, "train/a.png", "a")
    captioned(by_hand, "test/b.png", "b")
    assert [len(split) for split in read_splits(by_hand, 8)] == [1, 1]


def test_a_folder_without_pictures_says_what_it_expected(tmp_path):
    (tmp_path / "notes.md").write_text("no pictures here", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no pictures in .*: expected png, jpg, jpeg or webp pictures .*\.txt caption"):
        read_splits(tmp_path, 8)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        read_splits(tmp_path / "nowhere", 8)


def test_missing_packages_are_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"not found: run `npm ci --prefix data/npm`"):
        build_dataset(tmp_path / "node_modules", tmp_path / "out")
    (tmp_path / "node_modules").mkdir()
    with pytest.raises(DatasetError, match=r"emoji-datasource-google is not installed .*npm ci --prefix data/npm"):
        build_dataset(tmp_path / "node_modules", tmp_path / "out")
    with pytest.raises(DatasetError, match="@iconify-json/tabler is not installed"):
        build_dataset(tmp_path / "node_modules", tmp_path / "out", sources=["tabler"])
    with pytest.raises(DatasetError, match="unknown source 'apple'"):
        build_dataset(tmp_path / "node_modules", tmp_path / "out", sources=["apple"])
    assert not (tmp_path / "out").exists()


@needs_npm
def test_a_non_empty_folder_that_is_no_dataset_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DatasetError, match="not empty"):
        build_dataset(NODE_MODULES, tmp_path, sources=["tabler"])
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_captions_and_split_rules():
    lines = captions_for("red apple", ["apple", "fruit", "red", "ripe", "red apple"], "Noto emoji", "noto:1f34e")
    assert lines[:4] == ["red apple, Noto emoji", "red apple", "red apple Noto emoji", "red apple, Noto emoji style"]
    tags = lines[4].split(", ")
    assert tags[-1] == "Noto emoji" and 2 <= len(tags) - 1 <= 4 and set(tags[:-1]) <= {"apple", "fruit", "red", "ripe"}
    assert captions_for("x", ["only"], "line icon") == ["x, line icon", "x", "x line icon", "x, line icon style"]
    assert normalize_hexcode("0023-FE0F-20E3") == "0023-20e3"
    share = sum(in_test_split(f"c{i}", 0.1) for i in range(5000)) / 5000
    assert 0.08 < share < 0.12 and not in_test_split("c1", 0.0)



def test_cli_data_build_reports_counts_and_errors(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "data", "build", "--npm", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert code == 2 and "npm ci --prefix data/npm" in err

    def fake_build(npm, out, size, include_flags, progress, sources=()):
        progress(0, 2)
        progress(2, 2)
        return {"size": size, "splits": {"train": 1, "test": 1}, "concepts": {"train": 1, "test": 1},
                "sources": {"tabler": {"style": "line icon", "license": "MIT", "train": 1, "test": 1}}}

    monkeypatch.setattr("reverie.training.data.build.build_dataset", fake_build)
    code, out, err = run_cli(monkeypatch, capsys, "data", "build", "--out", str(tmp_path / "o"), "--size", "16")
    assert code == 0, err
    assert "tabler" in out and "line icon" in out and "(16 px)" in out
