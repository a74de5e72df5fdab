"""Prompt expansion: a pure function of the prompt and the seed, that keeps and never contradicts the prompt."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reverie.prompts.expansion import (
    ADDED_WEIGHT,
    COLOURS,
    EMOJI_STYLES,
    ICON_STYLE,
    MAX_ADDED_WORDS,
    MODIFIERS,
    TABLES,
    expand_prompt,
    expansion_parts,
    tables,
    words_of,
)

PROMPTS = ["red apple", "a cat", "rocket", "closed umbrella", "smiling face with sunglasses", "castle",
           "blue car", "tree", "(shiny:1.2) star", "git branch", "a dragon flying over mountains at dusk"]
STYLES = (*EMOJI_STYLES, ICON_STYLE)


def added(prompt: str, seed: int) -> str:
    expanded = expand_prompt(prompt, seed)
    assert expanded.startswith(prompt.rstrip())
    return expanded[len(prompt.rstrip()):]


def test_the_same_prompt_and_seed_give_the_same_expansion():
    for prompt in PROMPTS:
        for seed in (0, 1, 12345, 2**32 - 1):
            assert expand_prompt(prompt, seed) == expand_prompt(prompt, seed)


def test_other_seeds_give_other_expansions():
    for prompt in PROMPTS:
        assert len({expand_prompt(prompt, seed) for seed in range(8)}) >= 3, prompt


def test_the_users_words_come_first_unchanged_then_words_after_a_comma():
    for prompt in [*PROMPTS, "red apple, ", "cat,", "  odd   spacing  "]:
        for seed in range(5):
            expanded = expand_prompt(prompt, seed)
            assert expanded.startswith(prompt.rstrip())
            assert len(expanded) > len(prompt.rstrip())
            assert expanded[len(prompt.rstrip()):].lstrip().startswith(",") or prompt.rstrip().endswith(",")


def test_at_most_twelve_words_are_added():
    for prompt in PROMPTS:
        for seed in range(20):
            assert 1 <= len(added(prompt, seed).replace(",", " ").split()) <= MAX_ADDED_WORDS


def test_related_words_and_modifiers_are_weighted_down_and_the_style_is_not():
    for prompt in PROMPTS:
        for seed in range(5):
            for kind, words in expansion_parts(prompt, seed):
                if kind == "style":
                    assert words in STYLES
                else:
                    assert words.startswith("(") and words.endswith(f":{ADDED_WEIGHT})"), words


def test_the_added_words_mean_something_for_the_prompt():
    # Related words come from the concepts the prompt's words come in: a cat gets cat words.
    related = {w for seed in range(30) for kind, words in expansion_parts("cat", seed) if kind == "related"
               for w in words_of(words)}
    assert related & {"kitten", "animal", "pet", "tiger"}
    assert not related & {"car", "apple", "rocket"}
    # The style follows the words: git and branch are line icons, apples are emoji.
    git = [words for seed in range(30) for kind, words in expansion_parts("git branch", seed) if kind == "style"]
    assert git.count(ICON_STYLE) >= 25
    apple = [words for seed in range(30) for kind, words in expansion_parts("apple", seed) if kind == "style"]
    assert set(apple) <= set(STYLES) and sum(s in EMOJI_STYLES for s in apple) >= 15


@pytest.mark.parametrize("colour", ["red", "blue", "green", "yellow", "purple", "black", "white", "orange"])
def test_a_named_colour_is_never_contradicted(colour):
    for thing in ("apple", "car", "heart", "cat", "umbrella", "circle", "star"):
        prompt = f"{colour} {thing}"
        for seed in range(15):
            extra = set(words_of(added(prompt, seed)))
            assert not (extra & COLOURS) - {colour}, (prompt, seed, expand_prompt(prompt, seed))
            assert ICON_STYLE not in expand_prompt(prompt, seed)  # black outlines
            kinds = {kind for kind, _ in expansion_parts(prompt, seed)}
            assert not kinds & {"colour", "background"}


def test_no_colour_is_given_to_the_subject_of_a_prompt_without_one():
    for prompt in ("apple", "heart", "car", "frog"):
        for seed in range(15):
            for kind, words in expansion_parts(prompt, seed):
                if kind != "background":  # "on a white background" is the page, not the apple
                    assert not set(words_of(words)) & COLOURS, expand_prompt(prompt, seed)


def test_a_named_style_or_medium_is_not_replaced():
    for prompt in ("apple, Twemoji", "house line icon", "cat, watercolour", "pixel art castle", "cat, line art"):
        for seed in range(10):
            kinds = {kind for kind, _ in expansion_parts(prompt, seed)}
            assert "style" not in kinds and "medium" not in kinds, expand_prompt(prompt, seed)


def test_a_line_that_is_no_style_still_gets_one():
    assert any(kind == "style" for kind, _ in expansion_parts("finish line", 0))


def test_an_empty_prompt_stays_empty():
    for seed in range(3):
        assert expand_prompt("", seed) == ""
        assert expand_prompt("   ", seed) == "   "
        assert expansion_parts("", seed) == []


def test_unknown_words_still_get_a_style_and_modifiers():
    expanded = expand_prompt("zxqv blorp", 3)
    assert expanded.startswith("zxqv blorp, ")
    assert any(style in expanded for style in STYLES)


def test_the_same_in_another_process_with_another_hash_seed():
    """No hash() or process state: a fresh interpreter with other PYTHONHASHSEED draws the same words."""
    here = {f"{prompt}|{seed}": expand_prompt(prompt, seed) for prompt in PROMPTS for seed in (0, 7, 99)}
    code = ("import json,sys; from reverie.prompts.expansion import expand_prompt; "
            "print(json.dumps({f'{p}|{s}': expand_prompt(p, s) for p in json.loads(sys.argv[1]) for s in (0, 7, 99)}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(PROMPTS)], capture_output=True, text=True, env=env,
                         check=True)
    assert json.loads(out.stdout) == here


def test_known_expansions_do_not_drift():
    """Pinned words: a change to the tables or the draws changes the pictures people made; do it on purpose."""
    pinned = {
        ("red apple", 0): "red apple, Noto emoji, (even lighting:0.4), (clean lines:0.4)",
        ("a cat", 1): "a cat, flat Fluent emoji, (plain white background:0.4), (sharp focus:0.4)",
        ("git branch", 2): "git branch, line icon, (smooth shading:0.4)",
        ("rocket", 3): "rocket, Twemoji, (space:0.4), (centered:0.4), (plain white background:0.4)",
    }
    assert tables()["format"] == "reverie-expansion/1"
    assert TABLES.stat().st_size < 1_000_000
    for (prompt, seed), text in pinned.items():
        assert expand_prompt(prompt, seed) == text


def test_expansions_parse_as_prompts():
    from reverie.prompts.syntax import parse_prompt

    for prompt in PROMPTS:
        for seed in range(5):
            parse_prompt(expand_prompt(prompt, seed))  # the modifiers' weights are A1111 syntax


def test_every_modifier_is_short_and_colour_free_outside_the_colour_groups():
    for group, phrases in MODIFIERS.items():
        for phrase in phrases:
            assert len(phrase.split()) <= 4
            if group not in ("colour", "background"):
                assert not set(words_of(phrase)) & COLOURS, phrase


def test_the_tables_are_fitted_from_co_occurrence_and_meaning():
    from reverie.training.expansion import fit

    concepts = {
        "1": ({"apple", "fruit", "red"}, False),
        "2": ({"apple", "fruit", "green"}, False),
        "3": ({"pear", "fruit", "meat"}, False),
        "4": ({"apple", "meat"}, False),
        "5": ({"branch", "git"}, True),
        "6": ({"git", "merge"}, True),
    }
    close = {frozenset({"apple", "fruit"}), frozenset({"pear", "fruit"})}
    data = fit(concepts, similarity=lambda a, b: 0.8 if frozenset({a, b}) in close else 0.1)
    assert [tag for tag, _ in data["related"]["apple"]] == ["fruit"]  # meat came with apple by accident
    assert all(isinstance(weight, int) and weight > 0 for tags in data["related"].values() for _, weight in tags)
    assert "red" not in {tag for tags in data["related"].values() for tag, _ in tags}  # colours never offered
    assert data["styles"]["apple"] == [3, 0] and data["styles"]["git"] == [0, 2]


# -- the `expand` field, end to end ----------------------------------------------------------------
def test_expand_encodes_each_pictures_expansion_and_records_it(studio, tmp_path):
    from conftest import pixels
    from reverie.outputs.metadata import read_png_info

    fields = {"prompt": "a yellow star", "model": "tiny-random", "steps": 2, "width": 64, "height": 64,
              "n_samples": 2, "seed": 40, "expand": True}
    result = studio.run(fields, outdir=tmp_path / "expanded")
    plain = studio.run(fields | {"expand": False}, outdir=tmp_path / "plain")
    for image, seed in zip(result.images, (40, 41)):
        recorded = read_png_info(image.path)["reverie"]["prompt"]
        assert recorded["variant"] == "a yellow star" and recorded["expanded"] == expand_prompt("a yellow star", seed)
        assert recorded["prompt"] == recorded["expanded"] != "a yellow star"
        assert read_png_info(image.path)["parameters"].startswith(recorded["expanded"])
    assert any((pixels(a.image) != pixels(b.image)).any() for a, b in zip(result.images, plain.images))
    again = studio.run(fields, outdir=tmp_path / "again")  # the same seed: the same words, the same picture
    assert all((pixels(a.image) == pixels(b.image)).all() for a, b in zip(result.images, again.images))


def test_cli_expand_flag_and_from_remake_the_same_picture(monkeypatch, capsys, tmp_path):
    from conftest import pixels, run_cli
    from PIL import Image

    code, _, err = run_cli(monkeypatch, capsys, "generate", "a red apple", "--model", "tiny-random", "--steps", "2",
                           "-W", "64", "-H", "64", "-n", "1", "--seed", "7", "--expand", "--outdir", str(tmp_path / "a"))
    assert code == 0, err
    [made] = sorted((tmp_path / "a").glob("*.png"))
    code, out, _ = run_cli(monkeypatch, capsys, "info", str(made))
    assert code == 0 and "expanded:" in out and expand_prompt("a red apple", 7) in out
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--from", str(made), "--outdir", str(tmp_path / "b"))
    assert code == 0, err
    [again] = sorted((tmp_path / "b").glob("*.png"))
    assert (pixels(Image.open(made)) == pixels(Image.open(again))).all()
