"""reverie's own GAN: training (resume, the discriminator learning), sampling as a method (seeds,
metadata, truncation, walks), the CLI, mistakes, and dreaming with a trained GAN."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from conftest import pixels
from reverie.errors import BadRequest
from reverie.methods.dreaming import start_dream
from reverie.methods.dreaming.dream import Dream
from reverie.models.gan import GANGenerator, load_gan, save_gan
from reverie.models.gan_folders import is_gan_reference
from reverie.outputs.metadata import read_png_info
from reverie.studio import Studio, request_from_picture
from reverie.training.gan import GANSettings, diff_augment, folder_classes, run_gan, train_gan
from reverie.training.loop import TrainConfig
from conftest import run_cli

TINY = dict(size=16, z_dim=16, w_dim=16, g_base=16, d_base=16, least=8)
TINY_FLAGS = ["--size", "16", "--width", "16", "--d-width", "16", "--least", "8", "--z-dim", "16", "--batch-size", "4",
              "--device", "cpu", "--warmup", "1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """An easy folder: red discs and blue squares on white, in two subfolders (two classes)."""
    root = tmp_path_factory.mktemp("shapes")
    for folder, colour, shape in (("red", (220, 30, 30), "ellipse"), ("blue", (30, 30, 220), "rectangle")):
        (root / folder).mkdir()
        for i in range(8):
            picture = Image.new("RGB", (16, 16), "white")
            offset = i % 4
            getattr(ImageDraw.Draw(picture), shape)((2 + offset, 2 + offset, 10 + offset, 10 + offset), fill=colour)
            picture.save(root / folder / f"{i}.png")
    return root


def strong_gan(seed: int) -> GANGenerator:
    """A random 16 px two-class GAN (blue, red) with strong styles, so that seeds and classes
    change its pictures plainly."""
    torch.manual_seed(seed)
    generator = GANGenerator(16, 16, 16, 2, [16, 16, 8], ["blue", "red"])
    for module in generator.modules():
        if hasattr(module, "style"):
            torch.nn.init.normal_(module.style.weight, std=0.5)
    generator.compute_w_mean()
    return generator


@pytest.fixture(scope="module")
def gan_folder(tmp_path_factory):
    """`strong_gan` saved as a GAN folder, fp16."""
    return save_gan(strong_gan(0), tmp_path_factory.mktemp("gan") / "export")


def config(steps: int, batch_size: int = 4, **more) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, warmup=1, save_every=2, sample_every=1000,
                       device="cpu", **more)


def run_files(folder) -> dict[str, torch.Tensor]:
    """Every tensor a GAN run keeps: both parts' weights, the EMA weights, both Adam states, the export."""
    tensors = {}
    for name in ("discriminator", "generator", "generator.ema"):
        tensors |= {f"{name}.{k}": v for k, v in load_file(folder / "checkpoint" / f"{name}.safetensors").items()}
    for name in ("discriminator", "generator"):
        state = torch.load(folder / "checkpoint" / f"{name}.optimizer.pt", weights_only=True)["state"]
        tensors |= {f"{name}.adam.{i}.{k}": v for i, s in state.items() for k, v in s.items() if torch.is_tensor(v)}
    tensors |= {f"export.{k}": v for k, v in load_file(folder / "export" / "generator.safetensors").items()}
    return tensors


# -- training -----------------------------------------------------------------------------------
def test_a_gan_run_resumes_bit_for_bit(shapes, tmp_path):
    run_gan(shapes, tmp_path / "straight", config(4), GANSettings(**TINY), quiet=True)
    run_gan(shapes, tmp_path / "resumed", config(2), GANSettings(**TINY), quiet=True)
    run_gan(shapes, tmp_path / "resumed", config(4), GANSettings(**TINY), quiet=True)
    straight, resumed = run_files(tmp_path / "straight"), run_files(tmp_path / "resumed")
    assert set(straight) == set(resumed) and any(k.startswith("discriminator.adam") for k in straight)
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["name"] == "gan"
    config_json = json.loads((tmp_path / "straight" / "export" / "config.json").read_text())
    assert config_json["kind"] == "gan" and config_json["classes"] == ["blue", "red"] and config_json["trained_steps"] == 4
    # Resuming with other settings is refused, naming what differs.
    with pytest.raises(Exception, match="--out: .* other settings \\(size"):
        run_gan(shapes, tmp_path / "resumed", config(6), GANSettings(**(TINY | {"size": 32})), quiet=True)


def test_the_discriminator_tells_reals_from_early_fakes(shapes, tmp_path):
    torch.manual_seed(0)
    images = torch.cat([torch.from_numpy(pixels(Image.open(p))).permute(2, 0, 1)[None].to(torch.uint8)
                        for p in sorted(shapes.rglob("*.png"))])
    settings = GANSettings(**TINY, classes=[])
    _, trainer = train_gan(images, None, tmp_path, config(30, batch_size=8), settings, quiet=True)
    discriminator, generator = trainer.module("discriminator").eval(), trainer.module("generator").eval()
    with torch.no_grad():
        real = discriminator(images.float() / 127.5 - 1)
        fake = generator(torch.randn(64, 16, generator=torch.Generator().manual_seed(1)))
        fake_scores = discriminator(fake)
    # After 30 steps the discriminator scores the real pictures above the generator's: the chance
    # that a real picture outscores a fake one (ROC AUC) is near 1, where guessing gives 0.5.
    auc = (real[:, None] > fake_scores[None, :]).float().mean()
    assert real.mean() > fake_scores.mean() and auc > 0.9, (real, fake_scores)
    assert (tmp_path / "samples" / "gan-000030.png").is_file()


def test_diff_augment_is_the_same_for_the_same_draws_and_keeps_gradients():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    a = diff_augment(x, torch.Generator().manual_seed(3))
    b = diff_augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_classes_come_from_first_subfolders():
    assert folder_classes(["noto", "tabler", "noto"], None) == ["noto", "tabler"]
    assert folder_classes(["noto", "tabler"], False) == []
    assert folder_classes(["", ""], None) == []
    with pytest.raises(Exception, match="--conditional: the pictures must lie in at least two subfolders"):
        folder_classes(["", "a"], True)


# -- sampling as a method -----------------------------------------------------------------------
def gan_pictures(folder, outdir=None, **fields) -> list:
    result = Studio(device="cpu").run({"mode": "gan", "model": f"gan:{folder}"} | fields, outdir=outdir)
    return result


def test_pictures_carry_metadata_and_reproduce_from_their_seed(gan_folder, tmp_path):
    batch = gan_pictures(gan_folder, tmp_path / "out", n_samples=3, seed=10)
    assert [image.seed for image in batch.images] == [10, 11, 12]
    info = read_png_info(batch.images[1].path)
    assert info["reverie"]["seed"] == 11 and info["reverie"]["settings"]["mode"] == "gan"
    assert info["reverie"]["class"] == ["blue", "red"][11 % 2]
    assert "Seed: 11" in info["parameters"] and "Truncation: 1.0" in info["parameters"]
    alone = gan_pictures(gan_folder, n_samples=1, seed=11).images[0].image
    assert np.array_equal(pixels(alone), pixels(batch.images[1].image))  # a seed reproduces alone
    assert not np.array_equal(pixels(batch.images[0].image), pixels(batch.images[2].image))  # seeds differ
    remade = request_from_picture(batch.images[2].path)
    assert remade.n_samples == 1 and remade.seed == 12
    assert np.array_equal(pixels(Studio(device="cpu").run(remade).images[0].image), pixels(batch.images[2].image))
    assert batch.grid_path is not None and batch.grid_path.is_file()


def test_truncation_zero_gives_the_mean_picture_and_more_gives_more_variety(gan_folder):
    def spread(truncation: float) -> float:
        result = gan_pictures(gan_folder, n_samples=6, seed=0, truncation=truncation, class_name="red")
        stack = np.stack([pixels(image.image) for image in result.images]).astype(np.float32)
        return float(stack.std(axis=0).mean())

    assert spread(0.0) == 0.0  # every seed gives the class's mean picture
    assert 0.0 < spread(0.4) < spread(1.0)


def test_the_class_changes_the_picture_and_a_wrong_class_is_refused(gan_folder):
    red = gan_pictures(gan_folder, n_samples=1, seed=4, class_name="red").images[0].image
    blue = gan_pictures(gan_folder, n_samples=1, seed=4, class_name="blue").images[0].image
    assert not np.array_equal(pixels(red), pixels(blue))
    with pytest.raises(BadRequest, match="class_name: this GAN has no class 'green'; use one of blue, red"):
        gan_pictures(gan_folder, n_samples=1, class_name="green")


def test_fp16_export_keeps_the_pictures(gan_folder, tmp_path):
    generator = strong_gan(1)
    save_gan(generator, tmp_path / "fp16")
    save_gan(generator, tmp_path / "fp32", half=False)
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * 4)
    with torch.no_grad():
        full, half = load_gan(tmp_path / "fp32")(z, labels), load_gan(tmp_path / "fp16")(z, labels)
    assert torch.equal(full, generator.eval()(z, labels))
    # fp16 weights move pixels by well under one 8-bit level on average, and by a few at most.
    assert (full - half).abs().mean() * 127.5 < 0.5 and (full - half).abs().max() * 127.5 < 4
    assert (tmp_path / "fp16" / "generator.safetensors").stat().st_size < 0.6 * (tmp_path / "fp32" / "generator.safetensors").stat().st_size


def test_a_walk_writes_a_video_through_the_seeds(gan_folder, tmp_path):
    result = gan_pictures(gan_folder, tmp_path, n_samples=2, seed=0, walk=3, video_format="gif")
    assert result.video is not None and result.video.suffix == ".gif"
    with Image.open(result.video) as video:
        assert video.n_frames == 6  # 3 frames from each picture to the next, back to the first
        video.seek(0)
        first = pixels(video.convert("RGB"))
    assert np.abs(first - pixels(result.images[0].image)).mean() < 8  # the walk starts at picture 0 (GIF palette aside)
    with pytest.raises(BadRequest, match="n_samples of at least 2"):
        gan_pictures(gan_folder, n_samples=1, walk=3)


# -- the command line ---------------------------------------------------------------------------
def test_train_and_generate_from_the_command_line(shapes, gan_folder, monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "train", "gan", str(shapes), "--out", str(run), "--steps", "2",
                             *TINY_FLAGS)
    assert code == 0, err
    assert is_gan_reference(f"gan:{run}") and (run / "export" / "generator.safetensors").is_file()
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--model", f"gan:{run}", "-n", "2", "--seed", "7",
                             "-o", str(tmp_path / "out"))
    assert code == 0, err
    pictures = sorted((tmp_path / "out").glob("*.png"))
    assert len(pictures) == 2 and Image.open(pictures[0]).size == (16, 16)
    assert read_png_info(pictures[1])["reverie"]["settings"]["mode"] == "gan"
    # A GAN in the models folder is listed with kind gan, and its bare name routes to the gan mode too.
    models = tmp_path / "models"
    models.mkdir()
    (models / "shapes-gan").symlink_to(gan_folder, target_is_directory=True)
    monkeypatch.setenv("REVERIE_MODELS", str(models))
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert any(line.split()[:2] == ["shapes-gan", "gan"] for line in out.splitlines())
    code, out, err = run_cli(monkeypatch, capsys, "generate", "red", "--model", "shapes-gan", "-n", "1", "-o", str(tmp_path / "named"))
    assert code == 0, err
    assert read_png_info(next((tmp_path / "named").glob("*.png")))["reverie"]["class"] == "red"


def test_a_gan_in_the_builtin_folder_is_a_builtin_model(gan_folder, monkeypatch, capsys, tmp_path):
    import reverie.models.gan_folders as gan_module

    (tmp_path / "shapes").symlink_to(gan_folder, target_is_directory=True)
    monkeypatch.setattr(gan_module, "BUILTIN_DIR", tmp_path)
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert any(line.split()[:3] == ["shapes", "gan", "built"] for line in out.splitlines())
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", "shapes", "-n", "1", "-o", str(tmp_path / "o"))
    assert code == 0, err
    with pytest.raises(Exception, match="shapes is a GAN, not a diffusion model"):
        from reverie.models.registry import load_model

        load_model("shapes")


@pytest.mark.parametrize("case", ["no config", "not a gan", "damaged weights", "wrong shapes"])
def test_a_wrong_or_damaged_gan_folder_is_refused_naming_the_option(case, gan_folder, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    if case == "not a gan":
        (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    elif case in ("damaged weights", "wrong shapes"):
        config_json = json.loads((gan_folder / "config.json").read_text())
        if case == "wrong shapes":
            config_json["widths"] = [32, 32, 8]
        (folder / "config.json").write_text(json.dumps(config_json))
        weights = (gan_folder / "generator.safetensors").read_bytes()
        (folder / "generator.safetensors").write_bytes(weights[: len(weights) // 2] if case == "damaged weights" else weights)
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", f"gan:{folder}", "-n", "1", "-o", str(tmp_path / "o"))
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: model:"), line
    expected = {"no config": "is not a GAN folder", "not a gan": "is not a GAN folder",
                "damaged weights": "is damaged", "wrong shapes": "does not match config.json"}[case]
    assert expected in line


@pytest.mark.parametrize("args, message", [
    (["train", "gan", "/nonexistent/pictures"], "--data: no folder at /nonexistent/pictures"),
    (["train", "gan", "EMPTY"], "no pictures in"),
    (["train", "gan", "SHAPES", "--size", "48"], "--size: size must be 16, 32, 64, 128 or 256 px"),
    (["train", "gan", "SHAPES", "--batch-size", "1"], "--batch-size: a GAN needs at least 2"),
    (["generate", "--model", "gan:SHAPES_GAN", "--steps", "20"], "--steps: a GAN draws its pictures in one pass"),
    (["generate", "--model", "gan:nothing-here"], "no GAN named 'nothing-here'"),
])
def test_mistakes_exit_2_with_one_clear_line(args, message, shapes, gan_folder, monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("SHAPES_GAN", str(gan_folder)).replace("SHAPES", str(shapes))
            for a in args]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out" if args[0] == "train" else "-o", str(tmp_path / "o"))
    assert code == 2 and message in err, err


# -- dreaming -----------------------------------------------------------------------------------
DREAM = dict(prompt="a red apple", cutouts=4, save_every=2, seed=3)


def test_a_gan_dreams_in_its_z_and_classes_and_resumes_bit_for_bit(gan_folder, tmp_path):
    whole = start_dream(dict(DREAM, generator=f"gan:{gan_folder}"))
    assert whole.kind == "gan" and (whole.request.width, whole.request.height) == (16, 16)
    assert whole.request.upscale == 4  # shown at 64 px through the built-in upscaler, as mini's dreams are
    noise, classes = whole.generator.noise.detach().clone(), whole.generator.classes.detach().clone()
    report = whole.run(4, tmp_path / "whole")
    assert not torch.equal(noise, whole.generator.noise) and not torch.equal(classes, whole.generator.classes)
    assert [p.name for p in report.snapshots] == ["000002.png", "000004.png"]
    assert Image.open(report.picture).size == (64, 64)
    assert all(not p.requires_grad for p in whole.generator.gan.parameters())  # the network stays frozen
    assert set(whole.generator.trainable()) == {"noise", "classes"}
    half = start_dream(dict(DREAM, generator=f"gan:{gan_folder}"))
    half.run(2, tmp_path / "half")
    resumed = Dream.resume(tmp_path / "half")
    resumed.run(2, tmp_path / "half")
    assert np.array_equal(pixels(Image.open(tmp_path / "whole" / "dream.png")), pixels(Image.open(tmp_path / "half" / "dream.png")))
    assert torch.equal(resumed.generator.noise, whole.generator.noise)


def test_a_wrong_gan_generator_is_refused_naming_the_field(tmp_path):
    with pytest.raises(BadRequest, match="generator: .* is not a GAN folder"):
        start_dream(dict(DREAM, generator=f"gan:{tmp_path}"))
