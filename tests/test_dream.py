"""Dreaming with the built-in models for real, and with random public-format generators/guides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint_layouts import IMAGENET_F16, openai_clip_model, write_biggan, write_openai_clip, write_taming_vqgan
from conftest import pixels
from reverie.errors import BadCheckpoint, BadRequest, ModelNotFound, PromptSyntaxError
from reverie.methods.dreaming import start_dream
from reverie.methods.dreaming.dream import Dream
from reverie.progress import Progress
from reverie.methods.dreaming.prompts import DreamPrompt, parse_dream_prompt, parse_image_prompt
from conftest import run_cli

SMALL = dict(width=64, height=64, cutouts=8, save_every=1000)
TEXTS = ["red apple", "blue car"]


# -- prompt syntax ------------------------------------------------------------------------------
def test_notebook_prompt_syntax():
    assert parse_dream_prompt("a cozy cabin in a snowy forest | oil painting:0.5 | blurry:-0.5") == [
        DreamPrompt("a cozy cabin in a snowy forest", 1.0), DreamPrompt("oil painting", 0.5), DreamPrompt("blurry", -0.5),
    ]
    assert parse_dream_prompt("sunset:2:0.8") == [DreamPrompt("sunset", 2.0, 0.8)]
    # A colon that is not followed by a number is part of the text.
    assert parse_dream_prompt("photo: a red barn") == [DreamPrompt("photo: a red barn", 1.0, -math.inf)]
    assert parse_image_prompt("faces/me.png:0.3") == (parse_image_prompt("faces/me.png")[0], 0.3, -math.inf)


def test_repeated_words_weigh_more():
    prompts = parse_dream_prompt("football football galaxy guitar")
    assert [(p.text, p.weight) for p in prompts] == [("football", 2.0), ("galaxy", 1.0), ("guitar", 1.0)]
    assert parse_dream_prompt("red apple") == [DreamPrompt("red apple")]


@pytest.mark.parametrize("source, message", [
    ("cat | | dog", "empty prompt"), (":0.5", "no text"), ("blurry:-1", "positive weight"), ("", "positive weight"),
])
def test_bad_dream_prompts_name_the_problem(source, message):
    with pytest.raises(PromptSyntaxError, match=message):
        parse_dream_prompt(source)


# -- the built-in generator and guide, for real -------------------------------------------------
def test_dream_moves_toward_the_prompt_and_away_from_negatives(tmp_path):
    plain = start_dream(dict(prompt="red apple", seed=0, **SMALL))
    before = plain.scores(TEXTS)
    plain.run(30, tmp_path / "plain")
    after = plain.scores(TEXTS)
    assert after[0] > before[0] + 0.1  # the prompt's score rose
    assert after[0] > after[1] + 0.1  # and ends above an unrelated prompt's

    pushed = start_dream(dict(prompt="red apple | blue car:-1", seed=0, **SMALL))
    pushed.run(30, tmp_path / "pushed")
    # The negative weight drove "blue car" down, below where the plain dream left it and below the start.
    assert pushed.scores(TEXTS)[1] < min(after[1], before[1]) - 0.1
    assert (tmp_path / "plain" / "dream.png").is_file()


def test_continue_gives_the_same_pixels_as_an_uninterrupted_run(tmp_path):
    whole = start_dream(dict(prompt="green frog | yellow:0.5", seed=5, **SMALL))
    whole.run(12, tmp_path / "whole")
    half = start_dream(dict(prompt="green frog | yellow:0.5", seed=5, **SMALL))
    report = half.run(6, tmp_path / "half")
    assert report.step == 6
    resumed = Dream.resume(tmp_path / "half")
    assert resumed.step == 6
    resumed.run(6, tmp_path / "half")
    assert np.array_equal(pixels(Image.open(tmp_path / "whole" / "dream.png")), pixels(Image.open(tmp_path / "half" / "dream.png")))


def test_continue_with_new_prompts_but_not_a_new_size(tmp_path):
    dream = start_dream(dict(prompt="red apple", seed=1, **SMALL))
    dream.run(3, tmp_path)
    again = Dream.resume(tmp_path, prompt="blue car", lr=0.05)
    assert again.targets[0].label == "blue car" and again.step == 3
    assert again.optimizer.param_groups[0]["lr"] == 0.05
    with pytest.raises(BadRequest, match="width: a continued dream keeps its width"):
        Dream.resume(tmp_path, width=128)
    with pytest.raises(ModelNotFound, match="not a dream run folder"):
        Dream.resume(tmp_path / "steps")
    # A dream whose generator has changed shape since (an older reverie-mini) is refused by name;
    # its pictures stay where they are.
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    state["params"]["latents"] = state["params"]["latents"][..., :4, :4]
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(BadCheckpoint, match="latents.*start a new dream"):
        Dream.resume(tmp_path)
    assert (tmp_path / "dream.png").is_file()


def test_builtin_dreams_happen_at_minis_size_and_are_saved_larger(tmp_path):
    from reverie.outputs.metadata import read_png_info
    from reverie.studio import make_request

    assert [getattr(make_request(mode="dream", prompt="x"), k) for k in ("width", "height", "upscale")] == [128, 128, 2]
    assert make_request(mode="dream", prompt="x", width=64, height=64).upscale == 4  # still shown at 256
    assert [getattr(make_request(mode="dream", prompt="x", generator="pixels"), k) for k in ("width", "upscale")] == [256, 1]
    assert make_request(mode="dream", prompt="x", width=256, height=256).upscale == 1  # a large dream is saved as it is
    with pytest.raises(BadRequest, match="upscale"):
        make_request(mode="dream", prompt="x", upscale=3)
    dream = start_dream(dict(prompt="red apple", seed=0, cutouts=8, save_every=2))
    report = dream.run(2, tmp_path / "shown")
    saved = Image.open(report.picture)
    assert saved.size == (256, 256) and dream.picture().size == (128, 128)
    assert Image.open(report.snapshots[0]).size == (256, 256)
    # The saved picture is the dream enlarged: brought back down, it is the dream's own pixels.
    assert np.abs(pixels(saved.resize((128, 128), Image.BOX)) - pixels(dream.picture())).mean() < 8
    assert "Upscale: 2" in read_png_info(report.picture)["parameters"]
    plain = start_dream(dict(prompt="red apple", seed=0, cutouts=8, save_every=2, upscale=1)).run(1, tmp_path / "plain")
    assert Image.open(plain.picture).size == (128, 128)


def test_patience_stops_a_dream_that_no_longer_improves(tmp_path):
    report = start_dream(dict(prompt="red apple", seed=0, lr=1e-9, patience=4, **SMALL)).run(50, tmp_path)
    assert report.stopped == "patience" and report.step < 30
    assert (tmp_path / "dream.png").is_file()


def test_should_stop_keeps_the_last_picture_and_state(tmp_path):
    calls = iter([False, False, True])
    report = start_dream(dict(prompt="red apple", seed=0, **SMALL)).run(50, tmp_path, Progress(should_stop=lambda: next(calls)))
    assert report.stopped == "interrupted" and report.step == 2
    assert Dream.resume(tmp_path).step == 2


def test_pixel_generator_starts_from_a_picture(tmp_path, photo):
    dream = start_dream(dict(prompt="red apple", generator="pixels", init_image=photo, seed=0, **SMALL))
    start = np.asarray(Image.open(photo).convert("RGB").resize((64, 64), Image.LANCZOS), dtype=np.int16)
    assert np.abs(pixels(dream.picture()) - start).max() <= 3
    dream.run(3, tmp_path)


def test_image_prompts_pull_toward_a_picture(tmp_path, photo):
    """The same dream with and without the picture as a prompt: with it, the guide sees the
    dream end far nearer the picture."""
    from reverie.methods.dreaming.objective import image_target

    request = dict(prompt="a picture", generator="pixels", seed=0, **SMALL)
    pulled = start_dream(dict(request, image_prompts=[f"{photo}:2"]))
    plain = start_dream(request)
    picture = pulled.targets[-1]
    assert picture.weight == 2.0

    def likeness(dream) -> float:  # cosine between the whole dream and the picture, by the guide
        with torch.no_grad():
            seen = image_target(dream.guides, "dream", dream.generator(), 1.0, -math.inf).vectors[0]
        return float(seen @ picture.vectors[0])

    start = likeness(plain)
    assert likeness(pulled) == pytest.approx(start)  # one seed, one start
    pulled.run(4, tmp_path / "pulled")
    plain.run(4, tmp_path / "plain")
    assert likeness(pulled) > max(likeness(plain), start) + 0.4, (likeness(pulled), likeness(plain), start)


# -- the diffusion prior --------------------------------------------------------------------------
def _mean_colour(generator) -> torch.Tensor:
    with torch.no_grad():
        return generator()[0].mean(dim=(1, 2))


def test_the_prior_alone_draws_what_the_model_would_draw():
    """Score distillation from reverie-mini, with no CLIP at all, turns plain latents toward the
    prompt's colour: "red heart" ends redder than "blue heart" from the same start."""
    from reverie.methods.dreaming.generators import LatentGenerator
    from reverie.methods.dreaming.prior import DiffusionPrior
    from reverie.models.mini import load_mini

    mini = load_mini()
    colours = {}
    for prompt in ("red heart", "blue heart"):
        generator = LatentGenerator(mini.vae, 64, 64, torch.Generator().manual_seed(0))
        prior = DiffusionPrior(mini, parse_dream_prompt(prompt))
        optimizer = torch.optim.Adam(generator.parameters(), lr=0.1)
        rng = torch.Generator().manual_seed(0)
        for _ in range(40):
            optimizer.zero_grad()
            prior.loss(generator(), rng).backward()
            optimizer.step()
        colours[prompt] = _mean_colour(generator)
    red, blue = colours["red heart"], colours["blue heart"]
    assert red[0] - red[2] > blue[0] - blue[2] + 0.15, (red, blue)


def test_a_dream_in_the_priors_own_latents_gives_them_to_the_prior_whole():
    """Read through the encoder, the prior sees only what the encoder keeps; dreaming in its own
    latent space, it reads the latents themselves, and its pull on them is the SDS step."""
    from reverie.methods.dreaming.prior import DiffusionPrior

    dream = start_dream(dict(prompt="red heart", seed=0, **SMALL))
    assert dream._prior_reads_latents
    assert not start_dream(dict(prompt="red heart", generator="pixels", prior="mini", seed=0, **SMALL))._prior_reads_latents
    prior: DiffusionPrior = dream.prior
    latents = dream.generator.latents
    latents.grad = None
    prior.loss(dream.generator(), torch.Generator().manual_seed(0), latents).backward()
    direct = latents.grad.clone()
    # The same step by hand: the guided noise estimate's gap to the noise, weighted by 1 - alpha_bar.
    rng = torch.Generator().manual_seed(0)
    steps = len(prior.alphas)
    t = torch.randint(int(0.02 * steps), int(0.98 * steps), (1,), generator=rng)
    noise = torch.randn(latents.shape, generator=rng)
    alpha = prior.alphas[t]
    scaled = latents.detach() * prior.scaling
    eps_hat = prior._noise_estimate(alpha.sqrt() * scaled + (1 - alpha).sqrt() * noise, t)
    expected = (1 - alpha) * (eps_hat - noise) * prior.scaling / latents[0].numel()
    assert torch.allclose(direct, expected, atol=1e-6)


def test_prior_setting_and_its_mistakes(tmp_path):
    from reverie.methods.dreaming.prior import prior_for

    assert prior_for("auto", "mini") == "mini" and prior_for("auto", "pixels") == "none"
    assert prior_for("tiny-random", "pixels") == "tiny-random"
    auto = start_dream(dict(prompt="red apple", seed=0, **SMALL))
    assert auto.prior is not None  # auto: mini's own prior,
    assert auto.generator.vae is auto.prior.vae  # loaded once for the generator and the prior
    assert start_dream(dict(prompt="red apple", prior="none", seed=0, **SMALL)).prior is None
    assert start_dream(dict(prompt="red apple", generator="pixels", seed=0, **SMALL)).prior is None
    # Any model reverie loads can be the prior, at its own size: a random SD-shaped one here.
    dream = start_dream(dict(prompt="red apple | blue:-0.5", generator="pixels", prior="tiny-random", seed=0,
                             smoothness=5, **SMALL))
    assert dream.prior.size == 64 and [p.weight for p in dream.prior.prompts] == [1.0, -0.5]
    before = dream.generator.spectrum.detach().clone()
    dream.run(2, tmp_path)
    assert torch.isfinite(dream.generator.spectrum).all() and not torch.equal(before, dream.generator.spectrum)
    with pytest.raises(BadRequest, match="prior: tiny-random-inpainting is an inpainting model"):
        start_dream(dict(prompt="x", generator="pixels", prior="tiny-random-inpainting", **SMALL))
    with pytest.raises(ModelNotFound):
        start_dream(dict(prompt="x", prior="/no/such/model.safetensors", **SMALL))


# -- public generator and guide formats, random weights ----------------------------------------
def test_vqgan_generator_dreams_and_starts_from_a_picture(tmp_path, photo):
    small = dict(IMAGENET_F16, ch=32, ch_mult=[1, 2, 2], z_channels=8, resolution=32, attn_resolutions=[8])
    checkpoint = write_taming_vqgan(tmp_path / "vqgan", small, n_embed=16, embed_dim=4)
    dream = start_dream(dict(prompt="red apple", generator=f"vqgan:{checkpoint}", seed=0, **SMALL))
    assert dream.kind == "vqgan" and dream.generator.latents.shape == (1, 4, 16, 16)
    report = dream.run(2, tmp_path / "run")
    assert Image.open(report.picture).size == (64, 64)
    # The latents stay inside the codebook's range, as VQGAN+CLIP keeps them.
    latents, low, high = dream.generator.latents, dream.generator.low, dream.generator.high
    assert bool(((latents >= low) & (latents <= high)).all())
    # A .ckpt with its taming YAML beside it is recognised without the prefix.
    assert start_dream(dict(prompt="x", generator=str(checkpoint), init_image=photo, **SMALL)).kind == "vqgan"


def test_biggan_generator_dreams_but_cannot_start_from_a_picture(tmp_path, photo):
    folder = write_biggan(tmp_path / "biggan", output_dim=128, channel_width=16)
    dream = start_dream(dict(prompt="a dog", generator=str(folder), seed=0, **SMALL))
    classes = dream.generator.classes.detach().clone()
    dream.run(2, tmp_path / "run")
    assert not torch.equal(classes, dream.generator.classes)  # the class vector is optimized
    with pytest.raises(BadRequest, match="init_image: the biggan generator cannot start from a picture"):
        start_dream(dict(prompt="a dog", generator=f"biggan:{folder}", init_image=photo, **SMALL))


def test_openai_clip_file_guides_alone_and_in_an_ensemble(tmp_path):
    clip_file = write_openai_clip(tmp_path / "ViT-tiny.pt", openai_clip_model())
    dream = start_dream(dict(prompt="red apple", guides=["mini", str(clip_file)], seed=0, **SMALL))
    assert [g.image_size for g in dream.guides] == [64, 32]
    dream.run(2, tmp_path / "run")
    alone = start_dream(dict(prompt="red apple", generator="pixels", guides=[str(clip_file)], seed=0, **SMALL))
    alone.run(2, tmp_path / "alone")


# -- the command --------------------------------------------------------------------------------
def test_dream_command_writes_snapshots_video_and_continues(monkeypatch, capsys, tmp_path):
    args = ["dream", "red apple | blue:-0.5", "-W", "64", "-H", "64", "-n", "4", "--save-every", "2", "--cutn", "4",
            "--seed", "1", "-o", str(tmp_path), "--video", "dream.gif"]
    code, out, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 0, out
    run_dir = next(tmp_path.iterdir())
    assert sorted(p.name for p in (run_dir / "steps").iterdir()) == ["000002.png", "000004.png"]
    assert Image.open(run_dir / "dream.gif").n_frames == 2
    assert f"reverie dream --continue {run_dir}" in " ".join(out.split())
    code, out, _ = run_cli(monkeypatch, capsys, "dream", "--continue", str(run_dir), "-n", "2")
    assert code == 0 and "step 6" in out


@pytest.mark.parametrize("args, message", [
    (["dream", "blurry:-1"], "positive weight"),
    (["dream", "x", "--video", "out.avi"], "video: out.avi"),
    (["dream", "x", "--optimizer", "lbfgs"], "optimizer: unknown optimizer"),
    (["dream", "x", "--generator", "/no/such/vqgan.ckpt"], "unknown generator"),
    (["dream", "x", "--clip", "/no/such/clip.pt"], "no CLIP at /no/such/clip.pt"),
    (["dream", "--continue", "/no/such/run"], "not a dream run folder"),
    (["dream"], "prompt: give a prompt"),
    (["dream", "x", "-W", "66", "-H", "64"], "width: this autoencoder needs sizes that are multiples of 8"),
])
def test_dream_mistakes_exit_2(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, *args, *(["-o", str(tmp_path)] if args[1:2] != ["--continue"] else []))
    assert code == 2, err
    assert message in " ".join(err.split())


def test_zoom_mode_enlarges_the_centre_between_iterations(tmp_path):
    dream = start_dream(dict(prompt="red apple", generator="pixels", lr=1e-9, zoom=2.0, zoom_every=1, seed=0, **SMALL))
    dream.run(1, tmp_path)
    before = dream.picture()
    dream.run(1, tmp_path)  # zooms, then takes a (vanishing) step
    expected = before.crop((16, 16, 48, 48)).resize((64, 64), Image.BICUBIC)
    assert np.abs(pixels(dream.picture()) - pixels(expected)).mean() < 4
    assert np.abs(pixels(dream.picture()) - pixels(before)).mean() > 4 * np.abs(pixels(dream.picture()) - pixels(expected)).mean()


# -- a dream that goes non-finite -----------------------------------------------------------------
class NaNAfter:
    """The built-in guide, until its `after`-th picture embedding: then NaN, as a guide that
    overflows would give. It reaches the dream through the model cache, as every guide does."""

    def __init__(self, guide, after: int):
        self.guide, self.after, self.calls = guide, after, 0
        self.name, self.image_size = guide.name, guide.image_size

    def embed_texts(self, texts):
        return self.guide.embed_texts(texts)

    def embed_images(self, pixels):
        self.calls += 1
        embeddings = self.guide.embed_images(pixels)
        return embeddings * float("nan") if self.calls > self.after else embeddings

    def to(self, device):
        return self


def _cache_with_guide(guide_of):
    from reverie.methods.dreaming.guides import load_guide
    from reverie.models.cache import ModelCache

    models = ModelCache()
    models.put(("guide", "mini", "cpu"), guide_of(load_guide("mini")))
    return models


def test_a_dream_that_goes_nan_steps_back_and_lowers_its_learning_rate(tmp_path):
    # BigGAN at an absurd learning rate: its activations overflow and the scores turn NaN at the
    # third step (the "score nan" and all-black picture).
    folder = write_biggan(tmp_path / "biggan", output_dim=128, channel_width=16)
    dream = start_dream(dict(prompt="a dog", generator=str(folder), seed=0, lr=10.0, prior="none", **SMALL))
    report = dream.run(12, tmp_path / "run")
    assert report.step == 12 and math.isfinite(report.score)
    assert dream.recoveries and dream.recoveries[0]["lr"] == pytest.approx(1.0)
    assert all(math.isfinite(entry["loss"]) for entry in dream.history) and len(dream.history) == 12
    assert all(torch.isfinite(p).all() for p in dream.generator.trainable().values())
    assert pixels(Image.open(report.picture)).std() > 1  # a picture, not the black of NaN


def test_a_dream_that_stays_nan_stops_with_a_clear_error_and_saves_nothing(tmp_path):
    from reverie.methods.dreaming.dream import DreamDiverged

    # The guide turns NaN after 5 pictures and stays so: stepping back cannot help.
    models = _cache_with_guide(lambda guide: NaNAfter(guide, after=5))
    dream = start_dream(dict(prompt="red apple", seed=0, **SMALL), "cpu", models)
    with pytest.raises(DreamDiverged, match=r"even after lowering the learning rate to 0\.0002; nothing was saved"):
        dream.run(20, tmp_path / "run")
    assert not (tmp_path / "run" / "dream.png").exists()
    assert [r["lr"] for r in dream.recoveries] == pytest.approx([0.02, 0.002, 0.0002])
    # A guide that is NaN from the first picture: nothing to step back to.
    models = _cache_with_guide(lambda guide: NaNAfter(guide, after=0))
    dream = start_dream(dict(prompt="red apple", seed=0, **SMALL), "cpu", models)
    with pytest.raises(DreamDiverged, match="not finite from its start"):
        dream.run(5, tmp_path / "run2")
    assert not (tmp_path / "run2" / "dream.png").exists()
