"""Speed options that change pixels (issue 22): step caching and the tiny decoder (TAESD).

Step caching on the tiny random model (schedule, bit-identical at interval 1, the UNet put back)
and on reverie-mini for meaning (close to the picture without it; the right prompt still wins).
The tiny decoder with a random-weight AutoencoderTiny in TAESD's real layouts (diffusers folder,
A1111's single decoder file) in a temporary models folder.
"""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from conftest import pixels, psnr, run_cli
from reverie.errors import BadRequest, ModelNotFound
from reverie.models.step_cache import deep_modules, step_cache
from reverie.models.tiny import build_tiny, tiny_unet
from reverie.outputs.metadata import parse_a1111_parameters, read_png_info
from reverie.studio import make_request, request_from_picture

FAST = dict(model="tiny-random", steps=4, cfg_scale=5.0, width=64, height=64, prompt="a red apple", seed=7, n_samples=2)


def generate(studio, outdir=None, **fields):
    return studio.generate(make_request(**(FAST | fields)), outdir=outdir)


# ----------------------------------------------------------------------------- step caching


@pytest.mark.parametrize("sampler", ["dpmpp_2m_karras", "heun", "euler_a"])
def test_step_cache_1_is_bit_identical_to_off(studio, sampler):
    off = generate(studio, sampler=sampler)
    every = generate(studio, sampler=sampler, step_cache=1)
    for a, b in zip(off.images, every.images):
        assert np.array_equal(pixels(a.image), pixels(b.image))


def test_step_cache_2_changes_the_pictures_and_is_recorded(studio):
    off = generate(studio)
    cached = generate(studio, step_cache=2)
    assert not np.array_equal(pixels(off.images[0].image), pixels(cached.images[0].image))
    image = cached.images[0]
    assert image.metadata["settings"]["step_cache"] == 2
    assert "Step cache: 2" in image.parameters
    assert parse_a1111_parameters(image.parameters)["step_cache"] == 2
    assert "Step cache" not in off.images[0].parameters


def test_the_schedule_counts_evaluations_so_heun_keeps_refreshing():
    """Every `interval`-th UNet evaluation is whole, whatever the timesteps (Heun repeats them)."""
    unet = tiny_unet().eval()
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad(), step_cache(unet, 3) as cache:
        for timestep in (999, 800, 800, 600, 600, 400, 400):
            unet(sample, timestep, encoder_hidden_states=text)
    assert (cache.calls, cache.skipped) == (7, 4)  # whole at evaluations 0, 3, 6


def test_the_unet_is_put_back_also_when_sampling_fails():
    unet = tiny_unet().eval()
    patched = [unet, *deep_modules(unet)]
    with pytest.raises(KeyError), step_cache(unet, 2):
        assert all("forward" in module.__dict__ for module in patched)
        raise KeyError("a failed step")
    assert not any("forward" in module.__dict__ for module in patched)


def test_a_skipped_evaluation_reuses_deep_features_and_recomputes_the_shallow_branch():
    unet = tiny_unet().eval()
    text = torch.randn(1, 77, 32)
    first, second = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        whole = unet(second, 500, encoder_hidden_states=text).sample
        with step_cache(unet, 2):
            unet(first, 500, encoder_hidden_states=text)
            skipped = unet(second, 500, encoder_hidden_states=text).sample
    assert not torch.equal(skipped, whole)  # deep features from `first`
    # ... yet the new input still shows through the shallow branch
    with torch.no_grad(), step_cache(unet, 2):
        unet(first, 500, encoder_hidden_states=text)
        again = unet(first, 500, encoder_hidden_states=text).sample
    assert not torch.equal(skipped, again)


def test_from_remakes_a_step_cached_picture(studio, tmp_path):
    made = generate(studio, step_cache=2, outdir=str(tmp_path))
    request = request_from_picture(made.images[1].path)
    assert request.step_cache == 2
    again = studio.generate(request)
    assert np.array_equal(pixels(again.images[0].image), pixels(made.images[1].image))


def test_step_cache_on_the_cli_and_from(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a blue car", "--model", "tiny-random", "--steps", "4",
                             "--width", "64", "--height", "64", "-n", "1", "--seed", "3", "--step-cache", "2",
                             "--outdir", str(tmp_path / "first"))
    assert code == 0, err
    [made] = sorted((tmp_path / "first").glob("*-3.png")) or sorted((tmp_path / "first").glob("0*.png"))
    assert read_png_info(made)["reverie"]["settings"]["step_cache"] == 2
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--from", str(made), "--outdir", str(tmp_path / "again"))
    assert code == 0, err
    [again] = [p for p in (tmp_path / "again").glob("*.png") if "grid" not in p.name]
    assert np.array_equal(pixels(_open(again)), pixels(_open(made)))


def _open(path):
    from PIL import Image

    with Image.open(path) as picture:
        return picture.convert("RGB")


# Measured on reverie-mini at 15 steps (benchmarks/step_cache.py): 27.6 to 35 dB at interval 2.
MINI_PSNR_FLOOR = 25.0


def test_step_cache_2_stays_close_on_mini_and_keeps_the_meaning(studio):
    from test_mini import as_tensor
    from reverie.models.mini_clip import load_clip

    base = dict(prompt="red apple, Noto emoji", seed=0, steps=15, upscale=1, cfg_scale=4)
    off = studio.generate(make_request(**base))
    cached = studio.generate(make_request(**base, step_cache=2))
    for a, b in zip(off.images, cached.images):
        assert MINI_PSNR_FLOOR < psnr(pixels(a.image), pixels(b.image)) < float("inf")
    scores = load_clip().similarity(as_tensor([image.image for image in cached.images]), ["red apple", "blue car"])
    assert scores[:, 0].mean() > scores[:, 1].mean()


# ----------------------------------------------------------------------------- tiny decoder


def random_taesd() -> AutoencoderTiny:
    """TAESD's architecture (diffusers' AutoencoderTiny defaults are madebyollin/taesd's config)
    with random weights from a fixed seed."""
    torch.manual_seed(0)
    return AutoencoderTiny().eval()


def original_decoder_keys(model: AutoencoderTiny) -> dict:
    """The decoder's weights under the original TAESD's keys (A1111's taesd_decoder file):
    layer 0 there is the clamp, so diffusers' `layers.N` is `N+1`."""
    weights = {}
    for key, value in model.decoder.state_dict().items():
        _, index, rest = key.split(".", 2)
        weights[f"{int(index) + 1}.{rest}"] = value.contiguous()
    return weights


def write_sd_scale_model(folder, components=None):
    """The tiny random model (or `components`' text encoder and UNet) with a VAE that, as every SD
    model's, makes latents 8 times smaller than the picture (tiny-random's makes them 2 times
    smaller), as a diffusers folder."""
    c = components or build_tiny()
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(32, 32, 32, 32), latent_channels=4, norm_num_groups=32, sample_size=64)
    StableDiffusionPipeline(vae=vae.eval(), text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                            scheduler=EulerDiscreteScheduler.from_config(c.scheduler_config), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)


@pytest.fixture(scope="module")
def shared_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed") / "models"
    random_taesd().save_pretrained(folder / "taesd")
    write_sd_scale_model(folder / "sd-small")
    return folder


@pytest.fixture
def models_folder(shared_models, monkeypatch):
    monkeypatch.setenv("REVERIE_MODELS", str(shared_models))
    return shared_models


SD = dict(model="sd-small", sampler="euler")


def test_tiny_decoder_makes_the_pixels_and_is_recorded(studio, models_folder, tmp_path):
    vae = generate(studio, **SD)
    tiny = generate(studio, **SD, decoder="tiny", outdir=str(tmp_path))
    assert tiny.images[0].image.size == vae.images[0].image.size
    assert np.abs(pixels(tiny.images[0].image) - pixels(vae.images[0].image)).mean() > 5
    assert tiny.images[0].metadata["settings"]["decoder"] == "tiny"
    assert "Decoder: tiny" in tiny.images[0].parameters
    assert parse_a1111_parameters(tiny.images[0].parameters)["decoder"] == "tiny"
    again = studio.generate(request_from_picture(tiny.images[1].path))
    assert again.request.decoder == "tiny"
    assert np.array_equal(pixels(again.images[0].image), pixels(tiny.images[1].image))


def test_a1111_single_decoder_file_decodes_as_the_folder(studio, models_folder, tmp_path):
    folder_made = generate(studio, **SD, decoder="tiny", n_samples=1)
    single = tmp_path / "a1111"
    single.mkdir()
    save_file(original_decoder_keys(random_taesd()), single / "taesd_decoder.safetensors")
    torch.save(original_decoder_keys(random_taesd()), single / "taesd_decoder.pth")
    for path in (single / "taesd_decoder.safetensors", single / "taesd_decoder.pth", single):
        made = generate(studio, **SD, decoder=str(path), n_samples=1)
        assert np.array_equal(pixels(made.images[0].image), pixels(folder_made.images[0].image))


def test_tiny_decoder_previews(studio, models_folder):
    previews = []
    studio.run(make_request(**(FAST | SD | {"decoder": "tiny", "n_samples": 2})),
               progress=lambda event: previews.append(event.preview) if getattr(event, "preview", None) else None,
               previews=True)
    assert previews and previews[-1].size == (128, 64)  # two 64 px pictures side by side


def test_the_models_folders_tiny_decoder_makes_the_previews_of_vae_pictures(studio, models_folder, monkeypatch):
    previews = []
    request = make_request(**(FAST | SD | {"n_samples": 1}))
    made = studio.run(request, previews=True,
                      progress=lambda event: previews.append(event.preview) if getattr(event, "preview", None) else None)
    assert previews and previews[-1].size == (64, 64)  # decoded, not the linear map's enlarged latents
    monkeypatch.setenv("REVERIE_MODELS", str(models_folder / "nothing"))
    previews.clear()
    alone = studio.run(request, previews=True,
                       progress=lambda event: previews.append(event.preview) if getattr(event, "preview", None) else None)
    assert previews and previews[-1].size != (64, 64)
    assert np.array_equal(pixels(made.images[0].image), pixels(alone.images[0].image))  # the VAE's pixels


def test_missing_tiny_decoder_names_the_folder(studio, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFound, match="taesd/"):
        generate(studio, decoder="tiny")
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a cat", "--model", "tiny-random", "--steps", "2",
                             "--width", "64", "--height", "64", "-n", "1", "--decoder", "tiny",
                             "--outdir", str(tmp_path / "out"))
    assert code == 2 and "taesd" in err


def test_a_tiny_decoder_that_does_not_fit_the_model_is_refused(studio, models_folder):
    with pytest.raises(BadRequest, match="decoder: .* 8 times larger; tiny-random makes 4-channel latents 2 times"):
        generate(studio, decoder="tiny")


def test_tiles_keep_the_vae():
    with pytest.raises(BadRequest, match="decoder"):
        make_request(**(FAST | {"decoder": "tiny", "tile": True}))


def test_the_studio_takes_no_decoder_path():
    from reverie.server.submit import _check_choices

    _check_choices({"decoder": "tiny"})
    with pytest.raises(BadRequest, match="decoder"):
        _check_choices({"decoder": "/home/someone/taesd"})
