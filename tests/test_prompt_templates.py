"""Prompt templates (dynamicprompts), wildcards, per-picture prompts, combinable styles and stylize."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import run_cli
from reverie.errors import BadRequest
from reverie.outputs.metadata import parse_a1111_parameters, read_png_info
from reverie.prompts.picture import picture_prompt
from reverie.prompts.styles import Style, apply_styles, get_style, load_styles, style_weight
from reverie.prompts.syntax import BREAK, Fragment, parse_prompt
from reverie.prompts.templates import SHIPPED_WILDCARDS, combinations, random_variant
from reverie.studio import make_request, request_from_picture

TINY = {"model": "tiny-random", "steps": 2, "width": 64, "height": 64, "device": "cpu"}
SHIPPED_COLOURS = {line.strip() for line in (SHIPPED_WILDCARDS / "colours.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
SHIPPED_ANIMALS = {line.strip() for line in (SHIPPED_WILDCARDS / "animals.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")}


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    """Each test in an empty folder (no ./wildcards of the checkout's) and without REVERIE_WILDCARDS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REVERIE_WILDCARDS", raising=False)


def variants(template: str, seeds=range(40)) -> list[str]:
    return [random_variant(template, seed) for seed in seeds]


# ------------------------------------------------------------------ syntax


def test_alternatives_draw_one_of_them_and_plain_prompts_stay_as_written():
    drawn = variants("a {red|blue|green} car")
    assert set(drawn) == {"a red car", "a blue car", "a green car"}
    assert random_variant("a red car, $5, 16:9", 3) == "a red car, $5, 16:9"  # no template: the library is not asked


def test_weighted_alternatives_follow_their_weights():
    drawn = variants("{1::red|30::blue} car", range(200))
    assert 180 <= drawn.count("blue car") < 200 and "red car" in drawn


def test_several_of_the_alternatives_with_their_separator():
    for text in variants("{2$$a|b|c}"):
        picked = text.split(",")
        assert len(picked) == 2 and len(set(picked)) == 2 and set(picked) <= {"a", "b", "c"}
    for text in variants("{2$$ and $$cat|dog|fox}"):
        assert len(set(text.split(" and "))) == 2


def test_nested_alternatives():
    assert set(variants("a {cat|{red|blue} dog}", range(80))) == {"a cat", "a red dog", "a blue dog"}


@pytest.mark.parametrize("template, position, words", [
    ("a photo of {red|blue", 12, "never closed"),
    ("a {b|{c|d} e", 3, "never closed"),
    ("x __colours", 3, "wildcard starting at character 3"),
    ("a { | } car", 3, "all empty"),
    ("{} car", 1, "all empty"),
    ("{a|b} costs $5", 13, "'$'"),
])
def test_a_template_that_cannot_expand_names_the_character(template, position, words):
    with pytest.raises(BadRequest) as error:
        make_request({"prompt": template})
    assert error.value.field == "prompt"
    assert f"character {position}" in str(error.value) and words in str(error.value)
    with pytest.raises(BadRequest) as error:  # the negative prompt is a template too
        make_request({"prompt": "x", "negative_prompt": template})
    assert error.value.field == "negative_prompt"


def test_a_missing_wildcard_is_named_with_the_folders_searched(tmp_path):
    with pytest.raises(BadRequest) as error:
        make_request({"prompt": "a __colour__ car"})  # the shipped file is colours.txt
    message = str(error.value)
    assert error.value.field == "prompt" and "__colour__" in message and "character 3" in message
    assert str(SHIPPED_WILDCARDS) in message and str(tmp_path / "wildcards") in message and "colours" in message


def test_a1111_attention_syntax_passes_through_untouched():
    template = "(word:1.2) [a:b:0.5] {x|y} ((deep)) [low] BREAK photo: portrait, 16:9"
    for text in variants(template, range(10)):
        assert text.startswith("(word:1.2) [a:b:0.5] ") and text.endswith(" ((deep)) [low] BREAK photo: portrait, 16:9")
    pieces = parse_prompt(random_variant(template, 1))
    assert Fragment("word", 1.2) in pieces and BREAK in pieces


# ------------------------------------------------------------------ wildcards


def test_shipped_wildcards_and_nested_ones_from_yaml():
    for text in variants("__subjects/creature__", range(60)):
        words = text.split(" ")
        assert len(words) == 2 and (words[0] in SHIPPED_COLOURS | {"small", "big"}) and words[1] in SHIPPED_ANIMALS
    assert {random_variant("__colours__", seed) for seed in range(60)} == SHIPPED_COLOURS


def test_user_wildcards_override_the_shipped_ones(tmp_path, monkeypatch):
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "colours.txt").write_text("# my palette\nteal\n")
    assert set(variants("__colours__ car", range(10))) == {"teal car"}
    mine = tmp_path / "elsewhere"
    mine.mkdir()
    (mine / "colours.txt").write_text("ochre\n")
    monkeypatch.setenv("REVERIE_WILDCARDS", str(mine))  # the variable's folders come last and win
    assert set(variants("__colours__ car", range(10))) == {"ochre car"}


def test_nested_wildcards_in_user_files_and_a_missing_nested_one(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "pet.txt").write_text("__colours__ {cat|dog}\n")
    for text in variants("__pet__", range(30)):
        colour, animal = text.split(" ")
        assert colour in SHIPPED_COLOURS and animal in {"cat", "dog"}
    (folder / "broken.txt").write_text("a __nowhere__ thing\n")
    with pytest.raises(BadRequest, match="__nowhere__"):
        make_request({"prompt": "__broken__"})


# ------------------------------------------------------------------ per-picture prompts


def test_a_seed_draws_the_same_variant_alone_and_in_any_batch():
    template = "a __colours__ __animals__ {in the rain|at night|}"
    batch = make_request({"prompt": template, "seed": 100, "n_samples": 4, "n_iter": 2})
    for seed in batch.image_seeds():
        alone = make_request({"prompt": template, "seed": seed, "n_samples": 1})
        assert picture_prompt(batch, seed).variant == picture_prompt(alone, seed).variant == random_variant(template, seed)
    assert len({picture_prompt(batch, seed).variant for seed in range(40)}) > 10  # seeds differ


def test_a_seed_gives_its_variant_in_a_real_batch(studio):
    template = "a {red|blue|green|yellow|purple} __animals__"
    batch = studio.generate(template, seed=20, n_samples=3, **TINY)
    alone = studio.generate(template, seed=22, n_samples=1, **TINY)
    variants_made = [image.metadata["prompt"]["variant"] for image in batch.images]
    assert variants_made == [random_variant(template, seed) for seed in (20, 21, 22)]
    assert alone.images[0].metadata["prompt"]["variant"] == variants_made[2]
    assert len(set(variants_made)) > 1 or len({random_variant(template, s) for s in (20, 21, 22)}) == 1


def test_combinatorial_counts_batches_and_cap(studio):
    request = make_request({"prompt": "{a|b} {c|d|e}", "combinatorial": True, "n_samples": 4, "seed": 0})
    assert request.picture_count() == 6 and request.batch_count() == 2
    assert make_request({"prompt": "{a|b} {c|d|e}", "combinatorial": True, "n_iter": 2}).picture_count() == 12
    capped = make_request({"prompt": "{a|b} {c|d|e}", "combinatorial": True, "max_combinations": 4})
    assert capped.picture_count() == 4
    with pytest.raises(BadRequest) as error:
        make_request({"prompt": "{a|b} {c|d|e}", "combinatorial": True, "max_combinations": 4, "strict_combinations": True})
    assert error.value.field == "max_combinations"
    with pytest.raises(BadRequest) as error:
        make_request({"prompt": "{a|b}", "combinatorial": True, "rerank": 2})
    assert error.value.field == "rerank"
    assert combinations("__weather__", 100) == sorted(combinations("__weather__", 100))  # wildcard files count too

    messages = []
    result = studio.generate("{a|b} {c|d|e}", combinatorial=True, max_combinations=5, n_samples=2, seed=10,
                             progress=lambda event: messages.append(event.message or ""), **TINY)
    made = [image.metadata["prompt"]["variant"] for image in result.images]
    assert len(made) == 5 and len(set(made)) == 5  # one picture per combination, batches of 2, 2, 1
    assert [image.metadata["prompt"]["combination"] for image in result.images] == [0, 1, 2, 3, 4]
    assert any("more than 5 combinations" in message for message in messages)


def test_a_combinatorial_request_without_a_seed_starts_at_the_first_combination():
    for _ in range(5):
        request = make_request({"prompt": "{a|b|c} {d|e}", "combinatorial": True}).with_seed()
        assert request.seed % 6 == 0
        assert picture_prompt(request, request.seed).variant == "a d"


# ------------------------------------------------------------------ styles


def test_every_style_preset_loads_and_applies():
    styles = load_styles()
    assert len(styles) >= 10
    for style in styles:
        assert "{prompt}" in style.prompt or style.name == "None", style.name
        prompt, _negative = apply_styles([style.name], "red apple")
        assert "red apple" in prompt
        if style.name != "None":
            assert prompt != "red apple", style.name
        request = make_request({"prompt": "red apple", "styles": [style.name]})
        assert picture_prompt(request, 1).prompt == prompt


def test_styles_combine_in_order_and_join_negatives():
    prompt, negative = apply_styles(["Line icon", "Pixel art"], "cat", "blurry cat")
    assert prompt == "cat, line icon, pixel art, 8-bit, retro game sprite, limited palette, crisp pixels"
    assert negative == "blurry cat, colour, blurry, smooth gradients, photo"
    reversed_prompt, _ = apply_styles(["Pixel art", "Line icon"], "cat")
    assert reversed_prompt == "cat, pixel art, 8-bit, retro game sprite, limited palette, crisp pixels, line icon"
    # each preset wraps the result of the ones before: words before {prompt} go around it
    painted = Style("Painted", "a painting of {prompt}, framed")
    assert painted.apply(get_style("Line icon").apply("cat")) == "a painting of cat, line icon, framed"


def test_unknown_style_is_a_bad_request_naming_it():
    with pytest.raises(BadRequest) as error:
        make_request({"prompt": "cat", "styles": ["Pixel art", "Pixle art 2"]})
    assert error.value.field == "styles" and "'Pixle art 2'" in str(error.value) and "Pixel art" in str(error.value)


def test_stylize_weights_the_style_words():
    neutral, _ = apply_styles(["Oil painting"], "apple", stylize=100)
    words = "oil painting, brush strokes, dark background, visible impasto, gallery lighting"
    assert neutral == apply_styles(["Oil painting"], "apple")[0] == f"apple, {words}"
    dropped, dropped_negative = apply_styles(["Oil painting"], "apple", "dark", stylize=0)
    assert dropped == "apple" and dropped_negative == "dark"
    strong, _ = apply_styles(["Oil painting"], "apple", stylize=1000)
    weights = {piece.text.strip(" ,"): piece.weight for piece in parse_prompt(strong) if isinstance(piece, Fragment)}
    assert weights["apple"] == 1.0 and weights[words] == pytest.approx(1.58)
    around = Style("Around", "an oil painting of {prompt}, gallery lighting").apply("apple", style_weight(1000))
    assert around == "(an oil painting of:1.58) apple, (gallery lighting:1.58)"
    assert style_weight(50) < style_weight(100) == 1.0 < style_weight(250) < style_weight(1000) <= 1.6


def test_stylize_without_a_style_moves_the_cfg_scale():
    base = make_request({"prompt": "cat", "cfg_scale": 7.0})
    assert base.guidance_scale() == 7.0
    assert make_request({"prompt": "cat", "cfg_scale": 7.0, "stylize": 100}).guidance_scale() == 7.0
    assert make_request({"prompt": "cat", "cfg_scale": 7.0, "stylize": 1000}).guidance_scale() < 5.0
    assert make_request({"prompt": "cat", "cfg_scale": 7.0, "stylize": 0}).guidance_scale() == 13.0
    styled = make_request({"prompt": "cat", "cfg_scale": 7.0, "stylize": 1000, "styles": ["Pixel art"]})
    assert styled.guidance_scale() == 7.0  # with a preset, stylize weights its words instead


def test_a_presets_settings_fill_only_what_the_request_left_unset(monkeypatch):
    import reverie.prompts.styles as styles

    presets = (Style("Slow", "{prompt}, slow", settings={"steps": 40, "cfg_scale": 3.0}),
               Style("Fast", "{prompt}, fast", settings={"steps": 8, "sampler": "euler_a"}))
    monkeypatch.setattr(styles, "load_styles", lambda: presets)
    request = make_request({"prompt": "cat", "styles": ["Slow", "Fast"], "cfg_scale": 5.0}).with_style_settings()
    assert (request.steps, request.cfg_scale, request.sampler) == (8, 5.0, "euler_a")  # the later preset wins


# ------------------------------------------------------------------ metadata and --from


def test_metadata_records_template_and_resolved_prompt_and_from_remakes_the_picture(monkeypatch, capsys, tmp_path, studio):
    template = "a {red|blue|green} __animals__"
    code, out, err = run_cli(monkeypatch, capsys, "generate", template, "--steps", "3", "--upscale", "1", "-n", "2",
                             "--seed", "31", "--style", "Noto emoji", "--negative", "{blurry|dark}", "--device", "cpu",
                             "--outdir", str(tmp_path / "first"))
    assert code == 0, err
    second = sorted((tmp_path / "first").glob("*.png"))[1]
    info = read_png_info(second)
    own = info["reverie"]["prompt"]
    assert own["template"] == template and own["variant"] == random_variant(template, 32)
    assert own["prompt"] == f"{own['variant']}, Noto emoji" and own["negative_template"] == "{blurry|dark}"
    text = info["parameters"]
    assert text.splitlines()[0] == own["prompt"]
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == own["prompt"] and parsed["negative_prompt"] == own["negative_prompt"]
    assert f'Template: "{template}"' not in text and f"Template: {template}" in text
    assert 'Negative Template: {blurry|dark}' in text

    code, out, _ = run_cli(monkeypatch, capsys, "info", str(second))
    assert code == 0 and f"template:          {template}" in out and f"prompt:            {own['prompt']}" in out

    code, out, err = run_cli(monkeypatch, capsys, "generate", "--from", str(second), "--outdir", str(tmp_path / "again"))
    assert code == 0, err
    again = next((tmp_path / "again").glob("*.png"))
    assert read_png_info(again)["reverie"]["prompt"] == own
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(second)))


def test_from_remakes_a_combinatorial_picture_of_a_partial_batch(studio, tmp_path):
    result = studio.generate("{cat|dog|fox} face", combinatorial=True, n_samples=2, seed=3, outdir=tmp_path, **TINY)
    assert [image.metadata["prompt"]["variant"] for image in result.images] == ["cat face", "dog face", "fox face"]
    last = result.images[-1]  # alone in the second batch
    request = request_from_picture(last.path)
    assert (request.n_samples, request.keep_only, request.seed) == (1, 0, 5)
    again = studio.run(request)
    assert again.images[0].metadata["prompt"]["variant"] == "fox face"
    assert np.array_equal(np.asarray(again.images[0].image), np.asarray(last.image))
    middle = request_from_picture(result.images[1].path)  # of the first batch: made with its batch
    assert (middle.n_samples, middle.keep_only, middle.seed) == (2, 1, 3)
    remade = studio.run(middle).images[0]
    assert remade.metadata["prompt"]["variant"] == "dog face"
    assert np.array_equal(np.asarray(remade.image), np.asarray(result.images[1].image))


def test_a1111_text_quotes_a_template_with_commas_and_reads_it_back():
    from reverie.outputs.metadata import a1111_parameters

    template = 'a {red|blue} cat, "cute", __animals__'
    text = a1111_parameters("a red cat, \"cute\", owl", "", {"Steps": 3, "Seed": 1, "Template": template})
    assert text.splitlines()[-1].endswith('Template: "a {red|blue} cat, \\"cute\\", __animals__"')
    assert parse_a1111_parameters(text)["steps"] == 3 and parse_a1111_parameters(text)["seed"] == 1


def test_each_picture_is_scored_against_its_own_plain_words():
    import torch
    from PIL import Image

    from reverie.methods.rerank import Scorer

    class Guide:  # a picture of a cat looks like [1, 0], of a dog like [0, 1]
        name, image_size = "toy", 8

        def embed_texts(self, texts):
            return torch.tensor([[1.0, 0.0] if "cat" in text else [0.0, 1.0] for text in texts])

        def embed_images(self, pixels):
            return torch.tensor([[1.0, 0.0] if row.mean() > 0.5 else [0.0, 1.0] for row in pixels])

    cat, dog = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    scorer = Scorer(Guide())
    assert scorer.scores([cat, dog], ["(cat:1.3) face", "[dog] face"]) == [1.0, 1.0]
    assert scorer.scores([cat, dog], "cat face") == [1.0, 0.0]
