"""`--weights fp16|bf16`: weights resting in 16 bits, each layer computed in the request's dtype
(issue 22, memory). On the tiny random model (fp32 weights: the pictures move a little, the
option is recorded and `--from` makes the same pixels) and on reverie-mini (half the memory, the
prompt's meaning kept)."""

import numpy as np
import pytest
import torch

from conftest import pixels, psnr, run_cli
from reverie.errors import BadRequest
from reverie.methods.diffusion.run import diffusion_model
from reverie.models.cache import ModelCache, module_bytes
from reverie.models.weight_storage import store_weights, stored_dtype
from reverie.outputs.metadata import parse_a1111_parameters, read_png_info
from reverie.studio import make_request, request_from_picture

FAST = dict(model="tiny-random", steps=4, cfg_scale=5.0, width=64, height=64, prompt="a red apple", seed=7, n_samples=2,
            dtype="fp32")  # weights kept in 16 bits for an fp32 computation, on any CPU


def test_a_layer_computes_in_fp32_from_weights_resting_in_fp16():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Conv1d(8, 4, 1))
    rounded = [p.detach().to(torch.float16).to(torch.float32) for p in model.parameters()]
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), rounded):
            parameter.copy_(value)  # fp32 weights that fp16 holds exactly
    x = torch.randn(3, 8)
    expected = model[2](model[1](model[0](x)).unsqueeze(-1))
    model[0].to(torch.float16), model[2].to(torch.float16)
    store_weights(model, torch.float16, torch.float32)
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32  # norms stay
    got = model[2](model[1](model[0](x)).unsqueeze(-1))
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)  # the same fp32 arithmetic on the same values
    assert model[0].weight.dtype == torch.float16  # back at rest after the call
    assert stored_dtype(model) == torch.float16


def test_fp16_weights_move_the_picture_a_little_are_recorded_and_made_again_from_the_png(studio, tmp_path):
    full = studio.generate(make_request(**FAST))
    half = studio.generate(make_request(**FAST, weights="fp16"), outdir=str(tmp_path))
    for a, b in zip(full.images, half.images):
        assert 30 < psnr(pixels(a.image), pixels(b.image))  # close; tiny-random's fp32 weights are rounded
    image = half.images[1]
    assert image.metadata["settings"]["weights"] == "fp16"
    assert "Weights: fp16" in image.parameters and "Weights" not in full.images[0].parameters
    assert parse_a1111_parameters(image.parameters)["weights"] == "fp16"
    request = request_from_picture(image.path)
    assert request.weights == "fp16"
    again = studio.generate(request)
    assert np.array_equal(pixels(again.images[0].image), pixels(image.image))


def test_fp16_pictures_do_not_depend_on_their_batch_mates(studio):
    """The steady time embeddings (models/batch_invariance.py) work under the casting hooks."""
    three = studio.generate(make_request(**FAST | dict(n_samples=3, seed=20), weights="fp16"))
    alone = studio.generate(make_request(**FAST | dict(n_samples=1, seed=21), weights="fp16"))
    assert np.array_equal(pixels(three.images[1].image), pixels(alone.images[0].image))


def test_the_model_cache_holds_half_the_bytes():
    models = ModelCache(max_bytes=2**40)
    cpu = torch.device("cpu")
    full = diffusion_model(models, "tiny-random", cpu, torch.float32)
    half = diffusion_model(models, "tiny-random", cpu, torch.float32, "fp16")
    assert half is not full and len(models) == 2
    assert stored_dtype(half.unet) == torch.float16 and stored_dtype(full.unet) is None
    assert stored_dtype(half.text_encoder) == torch.float16
    # What the pipelines read to cast their inputs: the compute dtype.
    assert half.unet.dtype == half.vae.dtype == half.text_encoder.dtype == torch.float32
    for part in ("unet", "vae"):  # (tiny-random's text encoder is mostly its token embedding, kept)
        assert module_bytes(getattr(half, part)) < 0.55 * module_bytes(getattr(full, part))
    assert module_bytes(half) < module_bytes(full)


def test_openvino_cannot_run_cast_weights_and_auto_keeps_torch(studio, monkeypatch):
    import reverie.models.openvino_runtime as runtime

    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    with pytest.raises(BadRequest, match="16 bits"):
        studio.generate(make_request(**FAST, weights="fp16", runtime="openvino"))
    made = studio.generate(make_request(**FAST, weights="fp16", runtime="auto"))
    assert made.images[0].metadata["settings"]["runtime"] == "torch"


def test_weights_on_the_cli(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a blue car", "--model", "tiny-random", "--steps", "3",
                             "--width", "64", "--height", "64", "-n", "1", "--seed", "3", "--weights", "bf16",
                             "--outdir", str(tmp_path))
    assert code == 0, err
    [made] = [p for p in tmp_path.glob("*.png") if "grid" not in p.name]
    assert read_png_info(made)["reverie"]["settings"]["weights"] == "bf16"
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a blue car", "--model", "tiny-random", "--weights", "fp8")
    assert code == 2 and "weights" in (out + err)


def test_mini_with_fp16_weights_keeps_the_meaning(studio):
    from test_mini import as_tensor
    from reverie.models.mini_clip import load_clip

    base = dict(prompt="red apple, Noto emoji", seed=0, steps=12, upscale=1, cfg_scale=4, n_samples=2)
    full = studio.generate(make_request(**base))
    half = studio.generate(make_request(**base, weights="fp16"))
    for a, b in zip(full.images, half.images):
        assert 30 < psnr(pixels(a.image), pixels(b.image))  # mini's UNet and VAE files are fp16: only MiniLM rounds
    scores = load_clip().similarity(as_tensor([image.image for image in half.images]), ["red apple", "blue car"])
    assert scores[:, 0].mean() > scores[:, 1].mean()
