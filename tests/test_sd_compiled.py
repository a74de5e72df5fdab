"""Stable Diffusion's txt2img on OpenVINO alone (methods/diffusion/compiled.py, models/sd_bundle.py):
the torch pipeline's pictures from a diffusers folder or an SD 1.x .safetensors file, without
importing torch once the model's bundle is made.

The model is the tiny test model with a UNet of SD's shape large enough (12.4M parameters) for
runtime auto to run it on OpenVINO, as it runs SD's 860M."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import generate_twice_without_torch, pixels, psnr
from reverie.methods.diffusion import compiled
from reverie.methods.diffusion.request import GenerationRequest, resolve
from reverie.models.cache import ModelCache
from reverie.models.openvino_bundle import OpenVINOBundle, bundle_made
from reverie.models.sd_bundle import sd_bundle_folder, sd_source
from reverie.outputs.files import Outputs
from reverie.progress import Progress

pytest.importorskip("openvino")

MODELS = ModelCache()


def small_sd(in_channels: int = 4, guidance_embedding: int | None = None):
    """The tiny model's parts with a 12.4M-parameter UNet of SD's design (two levels, attention
    at the lower one), past runtime auto's 10M: a model this path serves (9 channels in: an
    inpainting model's; with a `guidance_embedding` width: distilled with guidance, as LCM's)."""
    import torch
    from diffusers import UNet2DConditionModel

    from reverie.models.tiny import build_tiny

    components = build_tiny()
    torch.manual_seed(0)
    components.unet = UNet2DConditionModel(
        sample_size=32, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(128, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=int(components.unet.config.cross_attention_dim), attention_head_dim=8,
        time_cond_proj_dim=guidance_embedding).eval()
    return components


def saved_small_sd(folder, in_channels: int = 4, guidance_embedding: int | None = None):
    """`small_sd` written as a diffusers folder: an SD pipeline's, or an inpainting one's (9
    channels); an LCM-distilled one's (`guidance_embedding`) with LCM's scheduler, as LCM's are saved."""
    import diffusers

    c = small_sd(in_channels, guidance_embedding)
    kind = diffusers.StableDiffusionInpaintPipeline if in_channels == 9 else diffusers.StableDiffusionPipeline
    scheduler = diffusers.LCMScheduler if guidance_embedding else diffusers.EulerDiscreteScheduler
    kind(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
         scheduler=scheduler.from_config(c.scheduler_config), safety_checker=None,
         feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return saved_small_sd(tmp_path_factory.mktemp("models") / "small-sd")


@pytest.fixture(scope="module")
def inpainting_folder(tmp_path_factory):
    return saved_small_sd(tmp_path_factory.mktemp("models") / "small-sd-inpainting", in_channels=9)


@pytest.fixture(scope="module")
def lcm_folder(tmp_path_factory):
    return saved_small_sd(tmp_path_factory.mktemp("models") / "small-lcm", guidance_embedding=256)


@pytest.fixture(scope="module")
def taesd_models(tmp_path_factory):
    """A models folder holding TAESD's architecture (random weights, in taesd/) and an SD model it
    fits: the 12.4M-parameter UNet with a VAE that makes latents 8 times smaller, as SD's does."""
    from test_speed_options import random_taesd, write_sd_scale_model

    folder = tmp_path_factory.mktemp("taesd-models")
    random_taesd().save_pretrained(folder / "taesd")
    write_sd_scale_model(folder / "sd-eight", small_sd())
    return folder


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """The module's bundles in a cache of its own (made once for the module's tests)."""
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path_factory.getbasetemp() / "sd-compiled-cache"))


def request_for(model, **fields) -> GenerationRequest:
    fields = {"prompt": "a red apple", "seed": 11, "width": 64, "height": 64} | fields
    return resolve(GenerationRequest(model=str(model), **fields))


def make(tmp_path, name: str, request: GenerationRequest, path=compiled.run):
    return path(request, MODELS, Progress(), Outputs(tmp_path / name))


def torch_run(request, models, progress, outputs):
    from reverie.methods.diffusion.run import run

    return run(request.model_copy(update={"runtime": "torch"}), models, progress, outputs)


def test_it_serves_sd_folders_and_leaves_the_rest_to_the_torch_pipeline(sd_folder, tmp_path):
    assert compiled.serves(request_for(sd_folder))  # the defaults: DPM++ 2M Karras, 25 steps
    for sampler in ("euler", "euler_karras", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "ddim",
                    "lcm", "unipc", "heun", "plms", "lms", "lms_karras", "dpm2", "dpm2_a", "ddpm", "deis",
                    "dpmpp_2s_karras", "dpmpp_sde_karras"):
        assert compiled.serves(request_for(sd_folder, sampler=sampler, dtype="fp32"))
    assert compiled.serves(request_for(sd_folder, step_cache=2)) and compiled.serves(request_for(sd_folder, tile=True))
    assert compiled.serves(request_for(sd_folder, upscale=2))
    refused = [dict(runtime="torch"), dict(width=96),
               dict(weights="fp16"),
               dict(width=832, height=768), dict(prompt="a red apple <lora:any:1>")]
    for fields in refused:
        assert not compiled.serves(request_for(sd_folder, **fields)), fields
    assert not compiled.serves(request_for(sd_folder, mode="img2img", init_image=str(sd_folder)))
    assert not compiled.serves(request_for("tiny-random"))  # a built-in toy: torch, as runtime auto runs it


def test_its_pictures_are_the_torch_pipelines_and_follow_the_prompt(sd_folder, tmp_path):
    """fp32: the same pictures to a few levels (the runtimes' kernels); bf16: as close as bf16
    on torch and OpenVINO get (measured 47 dB); both seeds, a negative prompt, each sampler. The
    stochastic ones (Euler a, DPM++ 2M SDE Karras, DPM2 a, DDPM) draw each step's noise from the seed's generator
    after its starting noise, as the torch pipeline's diffusers does (DPM++ SDE Karras from each
    seed's Brownian tree: 71-89 dB at 5-25 steps, where a time its tree is asked about rounds
    otherwise, tests/test_numpy_sampler.py); in bf16 diffusers draws Euler
    a's in bf16, which this path does not round. Two pictures a request for the default sampler
    and for one sampler of each way of drawing noise (Euler a: the seeds' generators, in the
    batch, which the other noise-drawing samplers share; DPM++ SDE Karras: each seed's tree);
    one for the others. The
    deterministic samplers that enter the steps as one of these does (UniPC, PLMS, LMS, DPM2,
    DEIS, DPM++ 2S: one model evaluation an entry of `timesteps`, the UNet's input the sampler's)
    are not drawn here: their whole runs are compared with diffusers' in
    tests/test_numpy_sampler.py, from txt2img's start and from img2img's."""
    for sampler, dtype, floor in (("dpmpp_2m_karras", "fp32", 60), ("euler", "fp32", 60), ("dpmpp_2m", "bf16", 38),
                                  ("euler_a", "fp32", 60), ("dpmpp_2m_sde_karras", "fp32", 60), ("euler_a", "bf16", 38),
                                  ("ddim", "fp32", 60), ("lcm", "fp32", 60), ("heun", "fp32", 60),
                                  ("dpm2_a", "fp32", 60), ("ddpm", "fp32", 60), ("dpmpp_sde_karras", "fp32", 60)):
        pictures = 2 if sampler in ("dpmpp_2m_karras", "euler_a", "dpmpp_sde_karras") else 1
        request = request_for(sd_folder, negative_prompt="blue", n_samples=pictures, steps=5, sampler=sampler,
                              dtype=dtype, eta=0.5 if sampler == "ddim" else 0.0)
        ours = make(tmp_path, f"ours-{sampler}-{dtype}", request)
        theirs = make(tmp_path, f"theirs-{sampler}-{dtype}", request, torch_run)
        assert [image.seed for image in ours.images] == [image.seed for image in theirs.images] == [11, 12][:pictures]
        for a, b in zip(ours.images, theirs.images):
            assert psnr(pixels(a.image), pixels(b.image)) > floor, (sampler, dtype, psnr(pixels(a.image), pixels(b.image)))
        if pictures == 2:
            assert psnr(pixels(ours.images[0].image), pixels(ours.images[1].image)) < 30  # the seeds' pictures differ
        recorded = ours.images[0].metadata["settings"]
        assert recorded["runtime"] == "openvino" and recorded["sampler"] == sampler and recorded["ran_dtype"] == dtype
        assert recorded["model_name"] == theirs.images[0].metadata["settings"]["model_name"] == "small-sd"
    # The text encoder's states reach the UNet: another prompt, another picture from the same
    # seed; the same request again, the same picture.
    last = request.model_copy(update={"n_samples": 1})
    storm = make(tmp_path, "storm", last.model_copy(update={"prompt": "a storm over the sea, at night"}))
    again = make(tmp_path, "again", last)
    assert np.array_equal(pixels(again.images[0].image), pixels(ours.images[0].image))
    assert psnr(pixels(storm.images[0].image), pixels(ours.images[0].image)) < 40


def test_img2img_and_variations_are_the_torch_pipelines(sd_folder, tmp_path):
    """A picture made again from a picture, on both paths, from each seed's same latents and noise;
    two-pass samplers (Heun; DPM2 a's noise; DPM++ SDE Karras's trees) enter at twice their step.
    The other samplers' entries are compared with diffusers' in tests/test_numpy_sampler.py."""
    source = make(tmp_path, "source", request_for(sd_folder, n_samples=1, steps=4, dtype="fp32")).images[0].path
    for number, (fields, dtype, floor) in enumerate((
            (dict(mode="img2img", prompt="a storm at sea", strength=0.7, n_samples=2, sampler="euler"), "fp32", 60),
            (dict(mode="variations", prompt="", n_samples=2), "fp32", 60),
            (dict(mode="img2img", prompt="a storm at sea", strength=0.5, n_samples=1), "bf16", 38),
            (dict(mode="img2img", prompt="a storm at sea", strength=0.6, n_samples=2, sampler="euler_a"), "fp32", 60),
            (dict(mode="img2img", prompt="a storm at sea", strength=0.6, n_samples=1, sampler="heun"), "fp32", 60),
            (dict(mode="img2img", prompt="a storm at sea", strength=0.6, n_samples=2, sampler="dpm2_a"), "fp32", 60),
            (dict(mode="img2img", prompt="a storm at sea", strength=0.6, n_samples=1, sampler="dpmpp_sde_karras"),
             "fp32", 60))):
        request = request_for(sd_folder, init_image=str(source), steps=5, dtype=dtype, width=None, height=None, **fields)
        assert compiled.serves(request), fields
        ours = make(tmp_path, f"ours{number}", request)
        theirs = make(tmp_path, f"theirs{number}", request, torch_run)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert psnr(pixels(a.image), pixels(b.image)) > floor, (fields, dtype, psnr(pixels(a.image), pixels(b.image)))
            assert psnr(pixels(a.image), pixels(Image.open(source).convert("RGB"))) < 40  # it moved from its input
        assert ours.images[0].metadata["settings"]["mode"] == fields["mode"]


def test_a_batch_past_the_pixels_one_evaluation_takes_runs_in_groups_of_the_same_pictures(sd_folder, tmp_path,
                                                                                           monkeypatch):
    """A batch with more pixels than SD_MAX_BATCH_PIXELS (four 512 px pictures; SDXL's: one 1024
    px one) is served, its UNet evaluations taking as many pictures as fit: each picture the one
    the whole batch makes, to the bit (with chaos, whose shared noise is the whole batch's first
    seed's); the progress counts the whole batch's steps once."""
    request = request_for(sd_folder, n_samples=3, steps=3, dtype="fp32", chaos=30)
    whole = make(tmp_path, "whole", request)
    monkeypatch.setattr(compiled, "SD_MAX_BATCH_PIXELS", 2 * 64 * 64)
    assert compiled.serves(request)
    batches, steps = [], []
    original = compiled.denoise

    def counted(request, bundle, start, seeds, *args, **kw):
        batches.append(len(seeds))
        return original(request, bundle, start, seeds, *args, **kw)

    monkeypatch.setattr(compiled, "denoise", counted)
    events = Progress(lambda event: steps.append((event.step, event.total)) if event.stage == "denoise" else None)
    grouped = compiled.run(request, MODELS, events, Outputs(tmp_path / "grouped"))
    assert batches == [2, 1] and steps == [(step, 6) for step in range(1, 7)]
    for a, b in zip(grouped.images, whole.images, strict=True):
        assert a.seed == b.seed and np.array_equal(pixels(a.image), pixels(b.image))


def masked_source(sd_folder, tmp_path):
    """(a 64 px picture the test model made, a mask repainting its right half): their paths."""
    source = make(tmp_path, "source", request_for(sd_folder, n_samples=1, steps=4, dtype="fp32")).images[0].path
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return source, tmp_path / "mask.png"


def assert_masked_like_torch(tmp_path, name: str, request: GenerationRequest, floor: float, source):
    """The masked request made here and on the torch pipeline: each picture over `floor` dB from
    the torch one's, the kept pixels the input's and the repainted ones not (`masked_source`'s
    mask; outpaint 64 px to the left); what was made here."""
    ours = make(tmp_path, f"ours{name}", request)
    theirs = make(tmp_path, f"theirs{name}", request, torch_run)
    for a, b in zip(ours.images, theirs.images, strict=True):
        assert psnr(pixels(a.image), pixels(b.image)) > floor, (name, psnr(pixels(a.image), pixels(b.image)))
        made, kept = pixels(a.image), pixels(Image.open(source))
        if request.mode == "inpaint":
            assert np.array_equal(made[:, :24], kept[:, :24]) and psnr(made[:, 40:], kept[:, 40:]) < 40
        else:
            assert made.shape == (64, 128, 3) and np.array_equal(made[:, 72:], kept[:, 8:])
    return ours


def test_inpaint_and_outpaint_are_the_torch_pipelines(sd_folder, tmp_path):
    source, _ = masked_source(sd_folder, tmp_path)
    for number, (fields, dtype, floor) in enumerate((
            (dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), n_samples=2), "fp32", 60),
            (dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), strength=0.6, sampler="euler", n_samples=1),
             "fp32", 60),
            (dict(mode="outpaint", outpaint_left=64, n_samples=1), "bf16", 38),
            (dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), strength=0.7, sampler="dpmpp_2m_sde_karras",
                  n_samples=2), "fp32", 60),
            (dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), strength=0.7, sampler="heun", n_samples=1),
             "fp32", 60))):
        request = request_for(sd_folder, init_image=str(source), steps=5, dtype=dtype, width=None, height=None,
                              prompt="a storm at sea", **fields)
        assert compiled.serves(request), fields
        assert_masked_like_torch(tmp_path, str(number), request, floor, source)


def test_a_large_unet_runs_the_cfg_batch_as_two_streams_and_keeps_the_picture(sd_folder, tmp_path, monkeypatch):
    """A UNet of SPLIT_BYTES or more (SD's; the test model's stands for it here) runs an even
    batch as two halves at once, one OpenVINO stream each: the pictures stay the torch
    pipeline's (fp32 over 60 dB, bf16 over 38), with step caching's two outputs too; an odd
    batch (LCM's one pass of one picture) runs whole."""
    from reverie.models import openvino_bundle

    timestep, odd, even = np.float32(1), np.zeros((3, 4)), np.arange(8.0).reshape(4, 2)
    assert openvino_bundle.cut_in_two((odd, timestep)) is None
    (first, t1), (second, t2) = openvino_bundle.cut_in_two((even, timestep))
    assert np.array_equal(np.concatenate([first, second]), even) and t1 is t2 is timestep

    monkeypatch.setattr(openvino_bundle, "SPLIT_BYTES", 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a stream a core (a test worker may run on one: no split)
    models = ModelCache()  # bundles read afresh, under the lowered size
    for number, (fields, floor) in enumerate(((dict(dtype="fp32"), 60), (dict(dtype="bf16"), 38),
                                              (dict(dtype="fp32", step_cache=2), 75))):
        request = request_for(sd_folder, n_samples=2, steps=4, sampler="euler", **fields)
        ours = compiled.run(request, models, Progress(), Outputs(tmp_path / f"ours{number}"))
        theirs = make(tmp_path, f"theirs{number}", request, torch_run)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert psnr(pixels(a.image), pixels(b.image)) > floor, (fields, psnr(pixels(a.image), pixels(b.image)))
        bundle = models.find(lambda key: key[0] == "openvino-bundle")
        held = [key for part in ("unet", "unet-whole", "unet-shallow") for key in bundle._compiled[part]]
        assert held and all(streams == 2 and shapes[0][0] == 2 for shapes, streams in held)  # halves of the CFG batch of 4
        requests = bundle._compiled["unet-whole" if "step_cache" in fields else "unet"]
        assert next(iter(requests.values()))[0].get_compiled_model().get_property("NUM_STREAMS") == 2
        models.clear()


def bundle_calls(monkeypatch) -> list[str]:
    """The parts the bundles run from now on (a UNet's views included), in order."""
    calls = []
    call = OpenVINOBundle.__call__

    def recorded(self, part, *inputs, **options):
        calls.append(part)
        return call(self, part, *inputs, **options)

    monkeypatch.setattr(OpenVINOBundle, "__call__", recorded)
    return calls


def test_seamless_tiles_are_the_torch_pipelines(sd_folder, tmp_path):
    """`tile`: the UNet, decoder and encoder exported again padding circularly, once, into the
    bundle's tile/ folder: the torch pipeline's seamless pictures (fp32), in txt2img, with step
    caching (its split finds its way through the circular UNet), and in img2img; not the plain
    pictures (the comparison can fail)."""
    source = make(tmp_path, "source", request_for(sd_folder, n_samples=1, steps=4, dtype="fp32")).images[0].path
    for number, fields in enumerate((dict(n_samples=2), dict(n_samples=1, step_cache=2),
                                     dict(mode="img2img", init_image=str(source), strength=0.7, width=None,
                                          height=None, prompt="a storm at sea", n_samples=1))):
        request = request_for(sd_folder, steps=5, dtype="fp32", sampler="euler", tile=True, **fields)
        assert compiled.serves(request), fields
        ours = make(tmp_path, f"ours{number}", request)
        theirs = make(tmp_path, f"theirs{number}", request, torch_run)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert psnr(pixels(a.image), pixels(b.image)) > 60, (fields, psnr(pixels(a.image), pixels(b.image)))
        if number == 0:  # measured 25-27 dB: the padding reaches the whole picture
            plain = make(tmp_path, "plain", request.model_copy(update={"tile": False}))
            for a, c in zip(ours.images, plain.images, strict=True):
                assert psnr(pixels(a.image), pixels(c.image)) < 30, psnr(pixels(a.image), pixels(c.image))
    assert bundle_made(sd_bundle_folder(sd_source(sd_folder), "f32") / "tile")


def test_a_tile_export_that_would_not_fit_is_not_begun(sd_folder, tmp_path, monkeypatch):
    """Without the memory for it, the tile export is an ExportFailed before anything is written
    (load_bundle then leaves the request to the torch pipeline, as for any bundle not had)."""
    from reverie.models import openvino_runtime
    from reverie.models.openvino_runtime import ExportFailed
    from reverie.models.sd_bundle import make_sd_tile_bundle

    monkeypatch.setattr(openvino_runtime, "available_memory", lambda device: 2**20)
    folder = tmp_path / "sd-bundle"
    with pytest.raises(ExportFailed, match="free memory"):
        make_sd_tile_bundle(sd_source(sd_folder), folder, "f32")
    assert not folder.exists()


def test_an_upscale_is_the_torch_pipelines(sd_folder, tmp_path):
    """`upscale` 2: the steps and the decode here, the built-in upscaler on torch as run.py runs
    it (the bundle has no network for it): the torch pipeline's enlarged picture (measured 67-71 dB)."""
    request = request_for(sd_folder, steps=3, dtype="fp32", upscale=2, n_samples=1)
    assert compiled.serves(request)
    ours, theirs = make(tmp_path, "ours", request), make(tmp_path, "theirs", request, torch_run)
    a, b = ours.images[0], theirs.images[0]
    assert a.image.size == b.image.size == (128, 128)
    assert psnr(pixels(a.image), pixels(b.image)) > 55, psnr(pixels(a.image), pixels(b.image))
    assert a.metadata["settings"]["upscale"] == 2


def test_step_caching_is_the_torch_pipelines(sd_folder, tmp_path, monkeypatch):
    """`step_cache`: the UNet's IR split where it keeps its deep features (whole every N-th
    evaluation, the shallow part on the kept features between), so that each picture is the
    torch pipeline's step-cached one (fp32: over 75 dB, measured 84 to inf; the kept features
    scaled by 0.98 give 64), in txt2img, img2img and inpaint, with a sampler that evaluates
    twice a step (Heun); at 1 the plain picture, bit for bit."""
    source, mask = masked_source(sd_folder, tmp_path)
    calls = bundle_calls(monkeypatch)
    plain = make(tmp_path, "plain", request_for(sd_folder, n_samples=2, steps=6, sampler="euler", dtype="fp32"))
    for number, fields in enumerate((dict(step_cache=3, n_samples=2, sampler="euler"),
                                     dict(step_cache=2, n_samples=1, sampler="heun"),
                                     dict(step_cache=2, n_samples=1, sampler="dpmpp_2m_karras", mode="img2img",
                                          init_image=str(source), strength=0.7, width=None, height=None),
                                     dict(step_cache=2, n_samples=1, sampler="euler", mode="inpaint",
                                          init_image=str(source), mask_image=str(mask), width=None, height=None))):
        request = request_for(sd_folder, steps=6, dtype="fp32", **fields)
        assert compiled.serves(request), fields
        calls.clear()
        ours = make(tmp_path, f"ours{number}", request)
        unet = [part for part in calls if part.startswith("unet")]
        theirs = make(tmp_path, f"theirs{number}", request, torch_run)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert psnr(pixels(a.image), pixels(b.image)) > 75, (fields, psnr(pixels(a.image), pixels(b.image)))
        assert ours.images[0].metadata["settings"]["step_cache"] == fields["step_cache"]
        interval = fields["step_cache"]
        assert unet == [("unet-whole" if index % interval == 0 else "unet-shallow") for index in range(len(unet))]
        if number == 0:
            assert len(unet) == 6
            for a, b in zip(ours.images, plain.images, strict=True):  # the deep features skipped moved it a little
                assert 25 < psnr(pixels(a.image), pixels(b.image)) < float("inf")
        if number == 1:
            assert len(unet) == 11  # Heun's evaluations, each counted: whole at 0, 2, 4, 6, 8, 10
    calls.clear()
    again = make(tmp_path, "one", request_for(sd_folder, n_samples=2, steps=6, sampler="euler", dtype="fp32",
                                              step_cache=1))
    assert set(part for part in calls if part.startswith("unet")) == {"unet"}
    for a, b in zip(again.images, plain.images, strict=True):
        assert np.array_equal(pixels(a.image), pixels(b.image))


def test_an_inpainting_model_is_the_torch_pipelines(sd_folder, inpainting_folder, tmp_path):
    """A 9-channel UNet (SD's inpainting models) inpaints and outpaints here as on the torch
    pipeline: the mask and a sample of the masked picture's latents beside the latents at each
    step, no picture encoded from noise, nothing put back between steps; the kept pixels are
    the input's. Other modes with it stay on the torch pipeline."""
    source, mask = masked_source(sd_folder, tmp_path)
    assert sd_source(inpainting_folder).inpainting and not sd_source(sd_folder).inpainting
    assert not compiled.serves(request_for(inpainting_folder))
    assert not compiled.serves(request_for(inpainting_folder, mode="img2img", init_image=str(source), width=None,
                                           height=None))
    for number, (fields, dtype, floor) in enumerate((
            (dict(mode="inpaint", n_samples=2), "fp32", 60),
            (dict(mode="inpaint", strength=0.6, sampler="euler_a", n_samples=2), "fp32", 60),
            (dict(mode="outpaint", outpaint_left=64, n_samples=1), "bf16", 38))):
        request = request_for(inpainting_folder, init_image=str(source), mask_image=str(mask), steps=5, dtype=dtype,
                              width=None, height=None, prompt="a storm at sea", **fields)
        assert compiled.serves(request), fields
        ours = assert_masked_like_torch(tmp_path, str(number), request, floor, source)
        assert ours.images[0].metadata["settings"]["runtime"] == "openvino"
        if fields.get("n_samples") == 2:  # each seed's own draws
            assert psnr(pixels(ours.images[0].image), pixels(ours.images[1].image)) < 40


def test_an_lcm_distilled_model_is_the_torch_pipelines(lcm_folder, sd_folder, tmp_path):
    """A UNet distilled with guidance (LCM's: the guidance scale's embedding as an input) runs
    here as diffusers runs it: one pass a step, the scale given to the UNet and no unconditioned
    pass, so the negative prompt does nothing; in every mode, against the torch pipeline with its
    UNet on torch and on OpenVINO (the export takes the embedding too)."""
    from reverie.methods.diffusion.run import run

    assert sd_source(lcm_folder).guidance_embedding == 256 and sd_source(sd_folder).guidance_embedding is None
    source, mask = masked_source(sd_folder, tmp_path)
    for number, (fields, dtype, floor) in enumerate((
            (dict(cfg_scale=8, n_samples=2), "fp32", 60),
            (dict(cfg_scale=1.5, n_samples=1), "bf16", 38),
            (dict(mode="img2img", init_image=str(source), strength=0.6, n_samples=2), "fp32", 60),
            (dict(mode="inpaint", init_image=str(source), mask_image=str(mask), n_samples=1), "fp32", 60))):
        request = request_for(lcm_folder, sampler="lcm", steps=4, dtype=dtype, **fields)
        if "init_image" in fields:
            request = request.model_copy(update={"width": None, "height": None})
        assert compiled.serves(request), fields
        ours = make(tmp_path, f"ours{number}", request)
        assert ours.images[0].metadata["settings"]["runtime"] == "openvino"
        for runtime in ("torch", "openvino"):
            theirs = run(request.model_copy(update={"runtime": runtime}), MODELS, Progress(),
                         Outputs(tmp_path / f"theirs{number}{runtime}"))
            for a, b in zip(ours.images, theirs.images, strict=True):
                assert psnr(pixels(a.image), pixels(b.image)) > floor, (fields, runtime, psnr(pixels(a.image), pixels(b.image)))
    plain = request_for(lcm_folder, sampler="lcm", steps=4, dtype="fp32", n_samples=1, cfg_scale=8)
    picture = pixels(make(tmp_path, "plain", plain).images[0].image)
    scaled = pixels(make(tmp_path, "scaled", plain.model_copy(update={"cfg_scale": 2.0})).images[0].image)
    negative = pixels(make(tmp_path, "negative", plain.model_copy(update={"negative_prompt": "a storm"})).images[0].image)
    assert psnr(picture, scaled) < 50  # the scale reaches the UNet
    assert np.array_equal(picture, negative)  # no unconditioned pass for a negative prompt to steer
    # Left out, the sampler, steps and scale are LCM's on both paths; the pictures are the same.
    default = request_for(lcm_folder, n_samples=1, dtype="fp32")
    for result in (make(tmp_path, "default", default), make(tmp_path, "default-torch", default, torch_run)):
        settings = result.images[0].metadata["settings"]
        assert (settings["sampler"], settings["steps"], settings["cfg_scale"]) == ("lcm", 4, 8.0)
        assert psnr(pixels(result.images[0].image), picture) > 60


def unet_lora(unet, seed: int, text_width: int | None = None) -> dict:
    """A kohya LoRA (rank 4, random) on `unet`'s attention and feed-forward layers; with a
    `text_width`, CLIP text-encoder layers of that width too."""
    import torch

    generator, state = torch.Generator().manual_seed(seed), {}

    def add(key, down, up):
        state[key + ".lora_down.weight"] = torch.randn(down, generator=generator) * 0.3
        state[key + ".lora_up.weight"] = torch.randn(up, generator=generator) * 0.3
        state[key + ".alpha"] = torch.tensor(2.0)

    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0", "ff.net.2")):
            add("lora_unet_" + name.replace(".", "_"), (4, module.in_features), (module.out_features, 4))
    if text_width:
        add("lora_te_text_model_encoder_layers_0_self_attn_q_proj", (4, text_width), (text_width, 4))
    return state


def test_a_unet_lora_runs_here_once_the_torch_path_made_its_export(sd_folder, tmp_path, monkeypatch):
    """A LoRA set for the UNet alone (LCM-LoRA's kind) runs from the bundle, its UNet's place
    taken by the export the torch path made of the UNet with those LoRAs on (the set's first
    request with runtime openvino), found by the key the bundle keeps; the picture is the torch
    pipeline's, the tags are out of the encoded prompt and in the picture's records. Before the
    bundle is made the request is tried here: the bundle is made, then without the set's export
    the torch pipeline makes the picture. A set not exported yet (one with text-encoder layers
    whose text encoder's export is not made, too) stays on the torch pipeline."""
    from safetensors.torch import save_file

    from reverie.methods.diffusion import _run
    from reverie.methods.diffusion.run import run

    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    components = small_sd()
    save_file(unet_lora(components.unet, 1), str(models / "Lora" / "style.safetensors"))
    width = int(components.text_encoder.config.hidden_size)
    save_file(unet_lora(components.unet, 2, text_width=width), str(models / "Lora" / "both.safetensors"))
    monkeypatch.setenv("REVERIE_MODELS", str(models))
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))  # no bundle yet
    cache = ModelCache()
    request = request_for(sd_folder, prompt="a red apple <lora:style:0.8>", n_samples=1, steps=4, dtype="fp32")
    assert compiled.serves(request)  # tried here: its bundle is not made yet
    tried = _run(request, cache, Progress(), Outputs(tmp_path / "tried"))
    assert bundle_made(sd_bundle_folder(sd_source(sd_folder), "f32"))
    assert tried.images[0].metadata["settings"]["runtime"] == "torch"  # the set's export was not made
    assert not compiled.serves(request)  # now known: not made yet
    first = run(request.model_copy(update={"runtime": "openvino"}), cache, Progress(), Outputs(tmp_path / "first"))
    assert first.images[0].metadata["settings"]["runtime"] == "openvino"
    assert compiled.serves(request)
    ours = compiled.run(request, cache, Progress(), Outputs(tmp_path / "ours"))
    theirs = torch_run(request, cache, Progress(), Outputs(tmp_path / "theirs"))
    plain = compiled.run(request.model_copy(update={"prompt": "a red apple"}), cache, Progress(), Outputs(tmp_path / "plain"))
    assert psnr(pixels(ours.images[0].image), pixels(theirs.images[0].image)) > 60
    assert psnr(pixels(ours.images[0].image), pixels(plain.images[0].image)) < 40  # the LoRA ran
    assert ours.images[0].metadata["loras"] == theirs.images[0].metadata["loras"]
    assert ours.images[0].metadata["loras"][0]["name"] == "style"
    for other in ("<lora:style:0.5>", "<lora:both:0.8>", "<lora:style:0.8> <lora:both:0.8>"):
        assert not compiled.serves(request.model_copy(update={"prompt": f"a red apple {other}"})), other
    assert not compiled.serves(request.model_copy(update={"quantize": "int8"}))
    assert not compiled.serves(request.model_copy(update={"tile": True}))  # its export does not pad circularly


def test_a_lora_with_text_layers_runs_here_once_the_torch_path_made_its_exports(sd_folder, tmp_path, monkeypatch):
    """A LoRA set with text-encoder layers (most community LoRAs): its first request with
    runtime openvino exports the text encoder with the set on beside the UNet's export of it, and
    from then on the bundle runs both in its parts' places, without torch: the picture is the
    torch pipeline's (fp32), and the text layers count (at a text weight of 0 the picture moves).
    A set of text layers alone takes the bundle's own UNet; another text weight, not exported
    yet, stays on the torch pipeline."""
    from safetensors.torch import save_file

    from test_lora import kohya_lora

    from reverie.methods.diffusion.run import run
    from reverie.models.sd_bundle import lora_text_encoder_folder

    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    words = {key: value for key, value in kohya_lora(3).items() if key.startswith("lora_te_")}  # the same CLIP's
    save_file(unet_lora(small_sd().unet, 2) | words, str(models / "Lora" / "both.safetensors"))
    save_file(words, str(models / "Lora" / "words.safetensors"))
    monkeypatch.setenv("REVERIE_MODELS", str(models))
    cache = ModelCache()
    make(tmp_path, "bundle", request_for(sd_folder, n_samples=1, steps=1, dtype="fp32"))  # the bundle made
    for tag in ("<lora:both:0.8>", "<lora:words:1>"):
        request = request_for(sd_folder, prompt=f"a red apple {tag}", n_samples=1, steps=4, dtype="fp32")
        assert not compiled.serves(request), tag
        first = run(request.model_copy(update={"runtime": "openvino"}), cache, Progress(), Outputs(tmp_path / "first"))
        assert first.images[0].metadata["settings"]["runtime"] == "openvino"
        assert compiled.serves(request), tag
        ours = compiled.run(request, cache, Progress(), Outputs(tmp_path / f"ours{tag}"))
        theirs = torch_run(request, cache, Progress(), Outputs(tmp_path / f"theirs{tag}"))
        assert psnr(pixels(ours.images[0].image), pixels(theirs.images[0].image)) > 60, tag
        assert ours.images[0].metadata["loras"] == theirs.images[0].metadata["loras"]
    found = compiled.served(request)
    assert found.loras["unet"] is None and found.loras["text"] is not None  # the bundle's own UNet
    assert lora_text_encoder_folder(sd_source(sd_folder), "f32", found.loras["text"]).is_dir()
    both = request_for(sd_folder, prompt="a red apple <lora:both:0.8>", n_samples=1, steps=4, dtype="fp32")
    with_text = compiled.run(both, cache, Progress(), Outputs(tmp_path / "with-text"))
    unet_only = both.model_copy(update={"prompt": "a red apple <lora:both:0.8:0>"})
    assert compiled.serves(unet_only)  # the same UNet export, the bundle's own text encoder
    without = compiled.run(unet_only, cache, Progress(), Outputs(tmp_path / "without-text"))
    assert psnr(pixels(with_text.images[0].image), pixels(without.images[0].image)) < 50  # the text layers ran
    assert not compiled.serves(both.model_copy(update={"prompt": "a red apple <lora:both:0.8:0.5>"}))


def watched(tmp_path, name: str, request: GenerationRequest):
    """The request run here with live previews: (its result, its previews in order)."""
    events = []
    result = compiled.run(request, MODELS, Progress(report=events.append, previews=True), Outputs(tmp_path / name))
    return result, [event.preview for event in events if event.preview is not None]


def test_a_tiny_decoder_makes_the_pictures_and_the_previews_here(taesd_models, tmp_path, monkeypatch):
    """`decoder tiny` runs here: TAESD exported once into a bundle of its own makes the pictures
    (the torch pipeline's TAESD pictures) and draws the previews (the last is the pictures
    themselves, side by side); recorded."""
    monkeypatch.setenv("REVERIE_MODELS", str(taesd_models))
    request = request_for(taesd_models / "sd-eight", decoder="tiny", n_samples=2, steps=4, dtype="fp32")
    assert compiled.serves(request)
    ours, previews = watched(tmp_path, "ours", request)
    theirs = make(tmp_path, "theirs", request, torch_run)
    by_vae = make(tmp_path, "vae", request.model_copy(update={"decoder": "vae"}))
    for a, b, c in zip(ours.images, theirs.images, by_vae.images, strict=True):
        assert psnr(pixels(a.image), pixels(b.image)) > 45, psnr(pixels(a.image), pixels(b.image))
        assert psnr(pixels(a.image), pixels(c.image)) < 30  # another decoder's picture of the same latents
    assert np.array_equal(np.asarray(previews[-1].convert("RGB")),
                          np.hstack([pixels(image.image) for image in ours.images]).astype(np.uint8))
    settings = ours.images[0].metadata["settings"]
    assert settings["decoder"] == "tiny" and settings["runtime"] == "openvino"
    assert "Decoder: tiny" in Image.open(ours.images[0].path).info["parameters"]


def test_the_models_folders_tiny_decoder_draws_the_previews_of_vae_pictures(taesd_models, tmp_path, monkeypatch):
    """With TAESD in the models folder, a watched request decoded by the VAE stays here, its
    previews drawn by TAESD (the picture's size, not the linear map's enlarged latents), its
    pictures the VAE's; TAESD's files damaged, the linear map draws them and nothing fails."""
    monkeypatch.setenv("REVERIE_MODELS", str(taesd_models))
    request = request_for(taesd_models / "sd-eight", n_samples=1, steps=2, dtype="fp32")
    made, previews = watched(tmp_path, "made", request)
    assert previews[-1].size == (64, 64)
    broken = tmp_path / "broken"
    (broken / "taesd").mkdir(parents=True)
    (broken / "taesd" / "taesd_decoder.safetensors").write_bytes(b"not a decoder")
    monkeypatch.setenv("REVERIE_MODELS", str(broken))
    alone, previews = watched(tmp_path, "alone", request)
    assert previews[-1].size == (256, 256)  # 8x8 latents through the linear map, enlarged to about 256 px
    assert np.array_equal(pixels(made.images[0].image), pixels(alone.images[0].image))


def test_a_tiny_decoder_that_does_not_fit_is_refused_here_as_on_torch(sd_folder, taesd_models, tmp_path, monkeypatch):
    """The test model's VAE makes latents 2 times smaller, TAESD enlarges 8 times: `decoder tiny`
    is refused naming what to change, previews fall back to the linear map."""
    from reverie.errors import BadRequest

    monkeypatch.setenv("REVERIE_MODELS", str(taesd_models))
    request = request_for(sd_folder, decoder="tiny", n_samples=1, steps=2, dtype="fp32")
    assert compiled.serves(request)
    with pytest.raises(BadRequest, match="decoder: .* 8 times larger; .* 2 times smaller .* --decoder vae"):
        make(tmp_path, "refused", request)
    _, previews = watched(tmp_path, "watched", request.model_copy(update={"decoder": "vae"}))
    assert previews and previews[-1].size != (64, 64)


def test_embeddings_are_the_torch_pipelines(sd_folder, tmp_path, monkeypatch):
    """An embedding of two vectors in the prompt: CLIP's tokenizer and the torch path's loaded
    table give its tokens the same rows as here; the picture is the torch pipeline's."""
    from safetensors.numpy import save_file

    width = json.loads((sd_folder / "text_encoder" / "config.json").read_text())["hidden_size"]
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    vectors = (np.random.default_rng(1).standard_normal((2, width)) * 0.02).astype(np.float32)
    save_file({"emb_params": vectors}, tmp_path / "models" / "embeddings" / "Storm-Style.safetensors")
    # (no token weights: this toy CLIP's states average near zero, where the weights' rescale to
    # the window's unweighted mean turns the runtimes' last-bit differences into visible ones)
    request = request_for(sd_folder, prompt="a storm-style sea at night", n_samples=2, steps=5, dtype="fp32")
    assert compiled.serves(request)
    ours, theirs = make(tmp_path, "ours", request), make(tmp_path, "theirs", request, torch_run)
    plain = make(tmp_path, "plain", request.model_copy(update={"prompt": "a sea at night"}))
    for a, b, c in zip(ours.images, theirs.images, plain.images, strict=True):
        assert psnr(pixels(a.image), pixels(b.image)) > 60, psnr(pixels(a.image), pixels(b.image))
        assert not np.array_equal(pixels(a.image), pixels(c.image))
    assert "TI hashes: \"Storm-Style: " in Image.open(ours.images[0].path).info["parameters"]


def test_its_tokenizer_gives_the_models_token_ids(sd_folder, tmp_path):
    from reverie.models.registry import load_model

    request = request_for(sd_folder, steps=1, n_samples=1)
    make(tmp_path, "made", request)  # the bundle, made or found
    bundle = compiled.load_bundle(MODELS, sd_source(sd_folder), compiled.precision_of(compiled.ran_dtype(request)))
    ours, theirs = compiled.BundleTokenizer.of(bundle), load_model(str(sd_folder)).tokenizer
    for text in ("a red apple", "A Cat, on  a mat!!", "émoji café naïve", ",", "", "日本語", "Hello\tworld\n2nd",
                 "masterpiece, (best quality:1.2), 8k"):
        assert ours(text, add_special_tokens=False).input_ids == theirs(text, add_special_tokens=False).input_ids
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.model_max_length) == (
        theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.model_max_length)


def test_the_bundle_links_the_unets_export_and_is_made_again_when_damaged(sd_folder, tmp_path):
    request = request_for(sd_folder, steps=2, n_samples=1, dtype="fp32")
    first = make(tmp_path, "first", request)
    folder = sd_bundle_folder(sd_source(sd_folder), "f32")
    assert bundle_made(folder)
    assert (folder / "unet.bin").stat().st_nlink == 2  # the torch path's export, one copy on disk
    # Its first 1000 bytes put in its place, not the file cut short: OpenVINO maps the weight
    # files, and the module's cache still holds this bundle (reading past a cut file's end is a
    # bus error in a later test).
    damaged = folder / "text_encoder.partial"
    damaged.write_bytes((folder / "text_encoder.bin").read_bytes()[:1000])
    damaged.replace(folder / "text_encoder.bin")
    assert not bundle_made(folder)
    again = make(tmp_path, "again", request, lambda *args: compiled.run(*args[:1], ModelCache(), *args[2:]))
    assert bundle_made(folder)
    assert np.array_equal(pixels(first.images[0].image), pixels(again.images[0].image))


def test_sd_safetensors_files_are_told_from_their_header(tmp_path):
    """An SD 1.x or 2.x .safetensors file in the original layout is a model this path serves
    (its UNet's parameters counted from the header, an SD 2 file's parameterization and size told
    as single_file.py tells them: only the header, a YAML beside it and the name are read), an
    inpainting file too (9 channels in); a .ckpt is not (the whole picture of a real-size SD 1.5 file against
    the torch pipeline: docs/speed.md)."""
    from test_single_file import export_tiny

    sd1, _, (unet, _, _) = export_tiny(tmp_path, "sd1")
    source = sd_source(sd1)
    assert source is not None and source.files == (sd1.resolve(),) and source.native_size == 512
    assert source.unet_parameters == sum(p.numel() for p in unet.parameters())
    assert source.scheduler_config()["prediction_type"] == "epsilon"
    v = sd_source(export_tiny(tmp_path, "sd2", prediction_type="v_prediction", name="v.safetensors")[0])  # its metadata
    base = sd_source(export_tiny(tmp_path, "sd2")[0])
    assert (v.native_size, v.scheduler_config()["prediction_type"]) == (768, "v_prediction")
    assert (base.native_size, base.scheduler_config()["prediction_type"]) == (512, "epsilon")
    inpainting = sd_source(export_tiny(tmp_path, "sd1", in_channels=9, name="inpainting.safetensors")[0])
    assert inpainting.inpainting and inpainting.native_size == 512 and not source.inpainting
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(sd1.read_bytes())
    assert sd_source(ckpt) is None  # a pickle's contents are not told without unpickling it
    assert not compiled.serves(request_for(sd1))  # a toy UNet (under 10M parameters) stays on torch


def test_a_bundle_that_cannot_be_made_leaves_the_model_to_the_torch_pipeline(sd_folder, tmp_path, monkeypatch):
    from reverie.methods.diffusion import METHOD

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(compiled, "_failed", {})

    def cannot(source, folder, precision):
        raise RuntimeError("the exporter cannot trace this layer")

    monkeypatch.setattr(compiled, "make_sd_bundle", cannot)
    request = request_for(sd_folder, steps=2, n_samples=1)
    assert compiled.serves(request)
    models = ModelCache()
    result = METHOD.run(request, models, Progress(), Outputs(tmp_path / "out"))
    assert len(result.images) == 1 and models.find(lambda key: key[0] == "diffusion") is not None
    assert not compiled.serves(request)  # this process does not try again


@pytest.mark.parametrize("options", [(), ("--step-cache", "2", "--tile")])
def test_the_command_makes_sd_pictures_without_importing_torch(sd_folder, tmp_path, options):
    """`reverie generate --model FOLDER` with the bundle made (by the first command): torch,
    diffusers and transformers are never imported (python -X importtime lists every module),
    also with step caching and seamless tiles."""
    generate_twice_without_torch(tmp_path, 2, "a red apple", "--model", str(sd_folder), "-n", "2", "--steps", "3",
                                 "--seed", "5", "-W", "64", "-H", "64", *options)


def test_int8_quantizes_the_unet_once_and_keeps_the_picture(sd_folder, tmp_path, monkeypatch):
    """`quantize int8`: the bundle's UNet quantized by NNCF from the model's own denoising, once;
    its pictures are the bf16 ones to the eye (the seeds' pictures stay apart), not the same
    bits; recorded, and made again from the record."""
    pytest.importorskip("nncf")
    from reverie.models import int8_unet
    from reverie.outputs.metadata import parse_a1111_parameters

    request = request_for(sd_folder, n_samples=2, steps=5, dtype="bf16")
    plain = make(tmp_path, "plain", request)
    quantized = make(tmp_path, "int8", request.model_copy(update={"quantize": "int8"}))
    folder = int8_unet.int8_folder(sd_bundle_folder(sd_source(sd_folder), "bf16"))
    facts = json.loads((folder / "done.json").read_text())
    assert facts["examples"] == len(int8_unet.CALIBRATION_PROMPTS) * int8_unet.CALIBRATION_STEPS
    assert (folder / "unet.xml").read_text().count('type="FakeQuantize"') > 10  # its layers' inputs quantized
    import openvino as ov

    ops = ov.Core().read_model(str(folder / "unet.xml")).get_ordered_ops()

    def int8_weights(kind: str) -> dict[str, bool]:
        """A quantized layer's weights are int8, scaled back where it reads them: no longer a Constant."""
        return {op.get_friendly_name(): op.input_value(1).get_node().get_type_name() != "Constant"
                for op in ops if op.get_type_name() == kind}

    convolutions = list(int8_weights("Convolution").values())
    assert convolutions[0] is convolutions[-1] is False and all(convolutions[1:-1])  # the ends stay as they were
    linears = int8_weights("MatMul")
    kept = {name: quantized for name, quantized in linears.items() if any(part in name for part in int8_unet.KEPT_LINEARS)}
    assert any(".attn2." in name for name in kept) and any("time_emb" in name for name in kept)
    assert not any(kept.values())  # the time embedding and the cross-attention stay as they were
    assert any(".attn1." in name for name in linears) and any(".ff." in name for name in linears)
    assert all(quantized for name, quantized in linears.items() if name not in kept)  # the rest in int8
    for a, b in zip(quantized.images, plain.images, strict=True):
        assert 28 < psnr(pixels(a.image), pixels(b.image)) < float("inf"), psnr(pixels(a.image), pixels(b.image))
    assert psnr(pixels(quantized.images[0].image), pixels(quantized.images[1].image)) < 28
    recorded = quantized.images[0].metadata["settings"]
    assert recorded["quantize"] == "int8" and plain.images[0].metadata["settings"]["quantize"] == "none"
    text = Image.open(quantized.images[0].path).info["parameters"]
    assert "Quantize: int8" in text and parse_a1111_parameters(text)["quantize"] == "int8"

    def never(*args):
        raise AssertionError("quantized again")

    monkeypatch.setattr(int8_unet, "quantize_unet", never)  # a fresh process finds it made
    again = make(tmp_path, "again", request.model_copy(update={"quantize": "int8", "n_samples": 1}),
                 lambda *args: compiled.run(*args[:1], ModelCache(), *args[2:]))
    assert np.array_equal(pixels(again.images[0].image), pixels(quantized.images[0].image))


def test_int8_quantizes_an_inpainting_model_from_its_own_inpainting(sd_folder, inpainting_folder, tmp_path):
    """An inpainting model's UNet is calibrated on inpainting (its mask and masked latents are
    inputs); its int8 pictures are the bf16 ones to the eye, the kept pixels the input's."""
    pytest.importorskip("nncf")
    from reverie.models import int8_unet

    source, mask = masked_source(sd_folder, tmp_path)
    request = request_for(inpainting_folder, mode="inpaint", init_image=str(source), mask_image=str(mask),
                          steps=5, dtype="bf16", width=None, height=None, n_samples=2, prompt="a storm at sea")
    plain = make(tmp_path, "plain", request)
    quantized = make(tmp_path, "int8", request.model_copy(update={"quantize": "int8"}))
    folder = int8_unet.int8_folder(sd_bundle_folder(sd_source(inpainting_folder), "bf16"))
    assert json.loads((folder / "done.json").read_text())["examples"] == (
        len(int8_unet.CALIBRATION_PROMPTS) * int8_unet.CALIBRATION_STEPS)
    for a, b in zip(quantized.images, plain.images, strict=True):
        assert 28 < psnr(pixels(a.image), pixels(b.image)) < float("inf"), psnr(pixels(a.image), pixels(b.image))
        assert np.array_equal(pixels(a.image)[:, :24], pixels(Image.open(source))[:, :24])
    assert quantized.images[0].metadata["settings"]["quantize"] == "int8"


def test_int8_is_refused_where_the_bundle_does_not_run_the_request(sd_folder, tmp_path, monkeypatch):
    """Where the torch pipeline would make the picture (tiles here), without the memory to
    quantize, or without NNCF, an int8 request is refused naming what to change; it never shares
    passes."""
    from reverie.errors import BadRequest
    from reverie.methods.diffusion import METHOD
    from reverie.methods.diffusion.shared import batch_key
    from reverie.models import int8_unet

    tiled = request_for(sd_folder, tile=True, quantize="int8", n_samples=1, steps=2)
    with pytest.raises(BadRequest) as refused:
        METHOD.run(tiled, ModelCache(), Progress(), Outputs(tmp_path / "tiled"))
    assert refused.value.field == "quantize" and "seamless tiles" in str(refused.value)
    # Not quantized yet, and too little memory to: refused saying so (not tried again in the process).
    monkeypatch.setattr(compiled, "_failed", {})
    monkeypatch.setattr(int8_unet, "int8_made", lambda folder: False)
    monkeypatch.setattr(int8_unet, "free_memory", lambda: 2**20)
    request = request_for(sd_folder, quantize="int8", n_samples=1, steps=2)
    for _ in range(2):
        with pytest.raises(BadRequest, match="quantizing the UNet to int8 needs about .* GiB of free memory"):
            METHOD.run(request, ModelCache(), Progress(), Outputs(tmp_path / "low"))
    assert not compiled.serves(request) and compiled.serves(request.model_copy(update={"quantize": "none"}))
    monkeypatch.setattr(int8_unet, "available", lambda: False)
    assert not compiled.serves(request)
    with pytest.raises(BadRequest, match="NNCF"):
        METHOD.run(request, ModelCache(), Progress(), Outputs(tmp_path / "plain"))
    assert batch_key(request) is None
    assert batch_key(request.model_copy(update={"quantize": "none", "runtime": "torch"})) is not None
