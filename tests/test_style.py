"""Neural style transfer for real: the built-in feature network, torchvision-layout VGG files with
random weights, the optimisation's run folder, trained style networks, and every front door."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import run_cli

from reverie.errors import BadCheckpoint, BadRequest, OutOfMemory
from reverie.methods.style.colour import to_ycbcr
from reverie.methods.style.request import StyleRequest
from reverie.methods.style.transfer import StyleTransfer
from reverie.models.cache import ModelCache
from reverie.models.mini_clip import WEIGHTS as JUDGE
from reverie.models.style_features import gram_distance, grams, load_clip_features, load_features
from reverie.outputs.metadata import read_png_info
from reverie.pixels import to_tensor
from reverie.studio import Studio

SIDE = 48


# -- pictures drawn here (the benchmark's paintings are never used by the tests) ---------------------
def scene(side: int = 64) -> Image.Image:
    """A content picture: a red disc and a yellow square on a blue-to-green sky."""
    y, x = np.mgrid[0:side, 0:side] / side
    array = np.stack([40 + 30 * x, 90 + 100 * y, 200 - 80 * y], axis=-1)
    array[(x - 0.35) ** 2 + (y - 0.4) ** 2 < 0.04] = (210, 40, 40)
    array[(x > 0.6) & (x < 0.85) & (y > 0.55) & (y < 0.8)] = (240, 210, 40)
    return Image.fromarray(array.astype(np.uint8))


def checks(side: int = 64) -> Image.Image:
    """Style A: a fine black-and-white diagonal checker."""
    y, x = np.mgrid[0:side, 0:side]
    on = ((x + y) // 4 + (x - y) // 4) % 2 == 0
    return Image.fromarray(np.where(on[..., None], 250, 10).repeat(3, -1).astype(np.uint8))


def blobs(side: int = 64) -> Image.Image:
    """Style B: soft orange and purple blobs, no straight edges."""
    y, x = np.mgrid[0:side, 0:side] / side
    wave = np.sin(7 * x + 3 * np.sin(5 * y)) * np.cos(6 * y)
    array = np.where(wave[..., None] > 0, np.array([240, 140, 30]), np.array([110, 40, 150])) * (0.75 + 0.25 * np.abs(wave[..., None]))
    return Image.fromarray(array.astype(np.uint8))


@pytest.fixture(scope="module")
def judge():
    """The small CLIP's judge: a network the transfers are not optimised with."""
    return load_clip_features(JUDGE)


def distance(judge, a: torch.Tensor, b: Image.Image) -> float:
    with torch.no_grad():
        return float(gram_distance(grams(judge, a), grams(judge, to_tensor(b))))


def layout_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Correlation of the two pictures' luminance averaged over 6x6 blocks: where the disc, the
    square and the sky are, whatever texture the style laid over them."""
    def layout(p):
        return torch.nn.functional.avg_pool2d(to_ycbcr(p)[:, :1], 6).flatten()

    return float(torch.corrcoef(torch.stack([layout(a), layout(b)]))[0, 1])


def transfer(styles, weights=None, steps=25, **fields) -> StyleTransfer:
    request = StyleRequest.build(content_image=scene(), style_images=styles, style_weights=weights, size=SIDE, seed=1,
                                 save_every=1000, **fields)
    run = StyleTransfer(request, "cpu", MODELS)
    for _ in range(steps):
        run.iterate()
    return run


MODELS = ModelCache()


@pytest.fixture(scope="module")
def styled():
    return transfer([checks()])


# -- the optimisation ---------------------------------------------------------------------------------
def test_the_loss_falls_and_the_style_comes_while_the_structure_stays(styled, judge):
    losses = [entry["loss"] for entry in styled.history]
    assert losses[-1] < 0.5 * losses[0]
    assert styled.history[-1]["style"] < 0.5 * styled.history[0]["style"]
    result, content = styled.result_pixels(), styled.content
    # Measured by a network the transfer never saw: closer to the style than the content was...
    assert distance(judge, result, checks(SIDE)) < 0.8 * distance(judge, content, checks(SIDE))
    # ...and the disc and square are still where they were.
    assert layout_correlation(result, content) > 0.5
    assert (result - content).abs().mean() > 0.05  # it did change


def test_preserve_colour_keeps_the_contents_colour_histogram(styled):
    def chroma_histogram(pixels):
        cbcr = to_ycbcr(pixels)[0, 1:].flatten(1)
        return torch.histogramdd(cbcr.T.contiguous(), bins=[12, 12], range=[-0.5, 0.5, -0.5, 0.5]).hist.flatten() / cbcr.shape[1]

    content = chroma_histogram(styled.content)
    plain = (chroma_histogram(styled.result_pixels()) - content).abs().sum()
    styled.request = styled.request.model_copy(update={"preserve_colour": True})
    kept = (chroma_histogram(styled.result_pixels()) - content).abs().sum()
    styled.request = styled.request.model_copy(update={"preserve_colour": False})
    assert kept < 0.1 < plain and kept < plain / 4


def test_the_heavier_style_wins(judge):
    toward_a = transfer([checks(), blobs()], [0.85, 0.15], steps=20).result_pixels()
    toward_b = transfer([checks(), blobs()], [0.15, 0.85], steps=20).result_pixels()
    # A's Gram distance shrinks where A weighs more, and B's where B does.
    assert distance(judge, toward_a, checks(SIDE)) < distance(judge, toward_b, checks(SIDE))
    assert distance(judge, toward_b, blobs(SIDE)) < distance(judge, toward_a, blobs(SIDE))


def test_requests_name_the_field_to_change():
    with pytest.raises(BadRequest, match="style_weights"):
        StyleRequest.build(content_image="a.png", style_images=["b.png"], style_weights=[0.5, 0.5])
    with pytest.raises(BadRequest, match="style_images"):
        StyleRequest.build(content_image="a.png")
    with pytest.raises(BadRequest, match="features"):
        StyleRequest.build(content_image="a.png", style_images=["b.png"], features="alexnet")
    with pytest.raises(BadRequest, match="size"):
        StyleRequest.build(content_image="a.png", style_images=["b.png"], size=8)


def test_a_transfer_too_large_for_memory_is_refused_before_any_step(studio, tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_MEMORY_LIMIT", str(0.4 * 2**30))
    fields = {"mode": "style", "content_image": scene(), "style_images": [checks()], "steps": 1}
    for size, optimizer in ((1024, "adam"), (384, "lbfgs")):  # L-BFGS keeps 50 steps of history
        events = []
        with pytest.raises(OutOfMemory, match="size"):
            studio.run(fields | {"size": size, "optimizer": optimizer}, outdir=tmp_path, progress=events.append)
        assert [event.stage for event in events] == ["load"] and not any(tmp_path.rglob("*.png"))
    fits = studio.run(fields | {"size": 384, "optimizer": "adam"}, outdir=tmp_path)
    assert fits.images[0].image.size == (384, 384)


# -- run folder: snapshots, stop, continue exactly ------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_snapshots_stop_and_continue_exactly(tmp_path, optimizer):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    scene().save(content)
    checks().save(style)
    fields = {"mode": "style", "content_image": str(content), "style_images": [str(style)], "size": 32, "seed": 3,
              "optimizer": optimizer, "save_every": 3}
    studio = Studio(device="cpu")
    whole = studio.run(fields | {"steps": 6}, outdir=tmp_path / "whole")
    assert [p.name for p in whole.snapshots] == ["000003.png", "000006.png"]
    assert (whole.run_dir / "steps" / "000006.png").is_file() and whole.picture.is_file()

    asked = iter(range(100))
    stopped = studio.run(fields | {"steps": 6}, outdir=tmp_path / "parts", should_stop=lambda: next(asked) >= 4)
    assert stopped.interrupted and stopped.step == 4
    again = studio.run({"mode": "style", "continue_from": str(stopped.run_dir), "steps": 2}, outdir=tmp_path / "parts")
    assert again.step == 6 and again.run_dir == stopped.run_dir
    saved = [torch.load(r.run_dir / "state.pt", weights_only=True) for r in (whole, again)]
    assert torch.equal(saved[0]["pixels"], saved[1]["pixels"])
    assert np.array_equal(np.asarray(whole.images[0].image), np.asarray(again.images[0].image))
    with pytest.raises(BadRequest, match="size"):
        studio.run({"mode": "style", "continue_from": str(stopped.run_dir), "size": 64})


# -- the feature networks ---------------------------------------------------------------------------
def vgg_state(arch: str = "vgg19") -> dict[str, torch.Tensor]:
    """torchvision's own state-dict layout with random weights (fp16 to keep the files small;
    the classifier's keys are there, small, as a stand-in for the real ones, which are ignored)."""
    import torchvision

    torch.manual_seed(0)
    features = getattr(torchvision.models, arch)(weights=None).features
    state = {f"features.{k}": v.half() for k, v in features.state_dict().items()}
    return state | {"classifier.0.weight": torch.zeros(4, 4), "classifier.0.bias": torch.zeros(4)}


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("vgg")
    state = vgg_state()
    torch.save(state, folder / "vgg19-random.pth")
    save_file(state, folder / "vgg19-random.safetensors")
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "resnet18.pth")
    (folder / "truncated.pth").write_bytes((folder / "vgg19-random.pth").read_bytes()[:100_000])
    return folder, state


def test_a_torchvision_vgg_file_loads_from_pth_and_safetensors(vgg_files):
    folder, state = vgg_files
    for name in ("vgg19-random.pth", "vgg19-random.safetensors"):
        network = load_features(f"vgg19:{folder / name}")
        assert torch.equal(network.body[0].weight, state["features.0.weight"].float())
        assert torch.equal(network.body[28].weight, state["features.28.weight"].float())  # conv5_1, the last one read
        assert network.style_layers == (1, 6, 11, 20, 29) and network.content_layer == 22
        style, content = network.features(torch.rand(1, 3, 32, 32))
        assert [a.shape[1] for a in style] == [64, 128, 256, 512, 512] and content.shape[1] == 512


@pytest.mark.parametrize("file, arch, message", [
    ("resnet18.pth", "vgg19", "not a torchvision VGG state dict"),
    ("truncated.pth", "vgg19", "damaged or truncated"),
    ("vgg19-random.pth", "vgg16", "is it vgg19"),
])
def test_a_wrong_feature_file_is_refused_clearly(vgg_files, file, arch, message):
    folder, _ = vgg_files
    with pytest.raises(BadCheckpoint, match=message) as refused:
        load_features(f"{arch}:{folder / file}")
    assert f"--features {arch}:" in str(refused.value) or f"as --features {arch}:FILE" in str(refused.value)


def test_the_cli_refuses_a_wrong_feature_file_naming_the_option(monkeypatch, capsys, tmp_path, vgg_files):
    folder, _ = vgg_files
    scene().save(tmp_path / "c.png")
    checks().save(tmp_path / "s.png")
    code, _, err = run_cli(monkeypatch, capsys, "style", str(tmp_path / "c.png"), str(tmp_path / "s.png"),
                           "--features", f"vgg19:{folder / 'resnet18.pth'}", "--outdir", str(tmp_path / "out"))
    assert code == 2 and "--features" in err and "vgg19" in err and len(err.strip().splitlines()) <= 2
    code, out, err = run_cli(monkeypatch, capsys, "style", str(tmp_path / "c.png"), str(tmp_path / "s.png"),
                             "--features", f"vgg19:{folder / 'vgg19-random.safetensors'}", "--size", "32", "--steps", "2",
                             "--outdir", str(tmp_path / "out"))
    assert code == 0, err


# -- the command line ---------------------------------------------------------------------------------
def test_the_command_line_end_to_end(monkeypatch, capsys, tmp_path):
    for name, picture in (("c.png", scene()), ("a.png", checks()), ("b.png", blobs())):
        picture.save(tmp_path / name)
    code, out, err = run_cli(monkeypatch, capsys, "style", str(tmp_path / "c.png"), f"{tmp_path / 'a.png'}:0.7",
                             f"{tmp_path / 'b.png'}:0.3", "--size", "32", "--steps", "4", "--save-every", "2",
                             "--preserve-colour", "--seed", "5", "--outdir", str(tmp_path / "out"))
    assert code == 0, err
    picture = sorted((tmp_path / "out").glob("*.png"))[0]
    info = read_png_info(picture)
    settings = info["reverie"]["settings"]
    assert settings["style_weights"] == [0.7, 0.3] and settings["preserve_colour"] and settings["step"] == 4
    assert "a.png:0.70, b.png:0.30" in info["parameters"] and "Seed: 5" in info["parameters"]
    assert "continue with: reverie style --continue" in out
    code, out, _ = run_cli(monkeypatch, capsys, "info", str(picture))
    assert code == 0 and "Preserve colour: yes" in out


@pytest.mark.parametrize("args, message", [
    (["{c}", "{s}:x"], "STYLE: '"),
    (["{c}", "{s}:-1"], "above 0"),
    (["{c}", "{s}", "--size", "8"], "size"),
    (["{c}", "missing.png"], "no style picture at missing.png"),
    (["{c}"], "give at least one style picture"),
    (["--model", "nowhere", "{c}"], "no style network 'nowhere'"),
    (["{c}", "{s}", "--optimizer", "sgd"], "optimizer"),
])
def test_mistakes_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    scene().save(tmp_path / "c.png")
    checks().save(tmp_path / "s.png")
    args = [a.format(c=tmp_path / "c.png", s=tmp_path / "s.png") for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "style", *args, "--outdir", str(tmp_path / "out"))
    assert code == 2 and message in err, err


# -- fast style networks --------------------------------------------------------------------------------
def test_train_a_style_network_resume_bit_for_bit_and_apply_it(monkeypatch, capsys, tmp_path):
    from reverie.models.style_network import StyleNetworkConfig, load_style_network
    from reverie.training.loop import TrainConfig
    from reverie.training.style import train_style_network

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    images[:3] = to_tensor(scene(32)).mul(255).round().to(torch.uint8)
    config = dict(batch_size=2, lr=2e-3, warmup=1, save_every=2, sample_every=4, seed=0, device="cpu")
    network = StyleNetworkConfig(widths=(8, 8, 16), residual_blocks=1, style="checks.png", features="builtin", size=32)
    train_style_network(checks(), images, tmp_path / "whole", TrainConfig(steps=4, **config), network, quiet=True)
    train_style_network(checks(), images, tmp_path / "parts", TrainConfig(steps=2, **config), network, quiet=True)
    train_style_network(checks(), images, tmp_path / "parts", TrainConfig(steps=4, **config), network, quiet=True)
    whole, parts = (load_style_network(tmp_path / run) for run in ("whole", "parts"))
    for (name, a), b in zip(whole.state_dict().items(), parts.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "whole" / "samples" / "style-000004.png").is_file()
    losses = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(entry["loss"]) for entry in losses)
    with pytest.raises(Exception, match="another style"):
        train_style_network(blobs(), images, tmp_path / "whole", TrainConfig(steps=5, **config), network, quiet=True)

    scene().save(tmp_path / "c.png")
    code, out, err = run_cli(monkeypatch, capsys, "style", "--model", str(tmp_path / "whole"), str(tmp_path / "c.png"),
                             "--size", "40", "--outdir", str(tmp_path / "out"))
    assert code == 0, err
    painted = Image.open(out.split()[0])
    assert painted.size == (40, 40) and read_png_info(out.split()[0])["reverie"]["settings"]["network"] == str(tmp_path / "whole")
    # Listed by `reverie models` (kind style) when it lies in the models folder.
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path))
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0 and any(line.split()[:2] == ["whole", "style"] for line in out.splitlines())


# -- the studio -------------------------------------------------------------------------------------------
def test_a_style_job_through_the_native_api(tmp_path):
    from fastapi.testclient import TestClient

    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    def b64(picture):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu")
    with TestClient(create_app(config)) as client:
        assert "style" in client.get("/api/v1/modes").json()
        body = {"mode": "style", "content_image": b64(scene()), "style_images": [b64(checks())], "size": 32, "steps": 3}
        # The studio never takes a path: feature files and style networks by listed name only.
        refused = client.post("/api/v1/jobs", json=body | {"features": "vgg19:/etc/passwd"})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "features"
        refused = client.post("/api/v1/jobs", json=body | {"network": "../runs/style"})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "network"
        job = client.post("/api/v1/jobs", json=body)
        assert job.status_code == 202, job.text
        from test_server_api import wait_done

        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done", done["error"]
        [image] = done["images"]
        assert image["width"] == 32 and image["settings"]["mode"] == "style"
        assert not list((tmp_path / "studio" / "uploads").glob("*"))  # the uploads went with the job
