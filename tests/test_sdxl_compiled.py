"""SDXL base on OpenVINO alone (methods/diffusion/compiled.py, models/sd_bundle.py): the torch
pipeline's pictures from an SDXL diffusers folder or single file, without importing torch once
the model's bundle is made (issue 22: SDXL peaked at 10.7 GiB on the torch pipeline).

The model is SDXL's architecture at toy width (test_sdxl.py's), with a UNet of 12.0M parameters
(so that runtime auto runs it here, as it runs SDXL's 2.6B) and weights drawn at the scale of a
trained network's (unit gain a layer), so that the prompt, its weights and the negative prompt
move the picture (test_sdxl.py's tiny weights leave the text unseen at the pixels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import generate_twice_without_torch, pixels, psnr
from test_sdxl import G_WIDTH, L_WIDTH, TIME_DIM, _clip, save_folder
from reverie.methods.diffusion import compiled
from reverie.methods.diffusion.request import GenerationRequest, resolve
from reverie.models.cache import ModelCache
from reverie.models.checkpoint_header import CONFIGS_DIR
from reverie.models.clip_tokenizer import clip_tokenizer
from reverie.models.components import ModelComponents
from reverie.models.openvino_bundle import OpenVINOBundle
from reverie.models.sd_bundle import sd_source
from reverie.models.sdxl import OPEN_CLIP_PAD_TOKEN
from reverie.models.sdxl_layout import save_sdxl_single_file
from reverie.outputs.files import Outputs
from reverie.progress import Progress

pytest.importorskip("openvino")

MODELS = ModelCache()
LONG = ", ".join(["a (lighthouse:1.4) on a cliff over a [stormy] sea at night"] * 8)  # two windows


def lively_sdxl(seed: int = 0, in_channels: int = 4) -> ModelComponents:
    """SDXL base at toy width (`in_channels` 9: an inpainting model's): each weight matrix drawn
    with unit gain (1 / sqrt(fan-in)), norms at 1, biases at 0."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 8), use_linear_projection=True,
        cross_attention_dim=L_WIDTH + G_WIDTH, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=G_WIDTH + 6 * TIME_DIM,
    )
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=64,
                        scaling_factor=0.13025, force_upcast=True)
    text_encoder, text_encoder_2 = _clip(L_WIDTH, "quick_gelu", projection=False), _clip(G_WIDTH, "gelu", projection=True)
    with torch.no_grad():
        for model in (unet, vae, text_encoder, text_encoder_2):
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif p.ndim < 2:  # the norms' scales
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, p[0].numel() ** -0.5)
            model.eval().requires_grad_(False)
    scheduler = json.loads((CONFIGS_DIR / "sdxl" / "scheduler" / "scheduler_config.json").read_text())
    return ModelComponents(name="lively-sdxl", unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                           text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
                           scheduler_config=scheduler, family="sdxl")


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    """The model as a diffusers folder and as one single file (SGM layout)."""
    root = tmp_path_factory.mktemp("sdxl-compiled")
    components = lively_sdxl()
    folder = save_folder(components, root / "lively-sdxl")
    file = save_sdxl_single_file(components, root / "lively-sdxl-file.safetensors")
    return {"folder": folder, "file": file}


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch, sdxl_model):
    """The module's bundles in a cache of its own; the single file loaded with the model's own
    configs (it carries none, and the published ones would not fit toy weights)."""
    import reverie.models.sdxl as sdxl

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path_factory.getbasetemp() / "sdxl-compiled-cache"))
    monkeypatch.setattr(sdxl, "shipped_sdxl_config_dir", lambda family: sdxl_model["folder"])


def request_for(model, **fields) -> GenerationRequest:
    fields = {"prompt": "a red apple", "seed": 11, "width": 64, "height": 64, "steps": 4, "sampler": "euler",
              "dtype": "fp32", "n_samples": 1} | fields
    return resolve(GenerationRequest(model=str(model), **fields))


def make(tmp_path, name: str, request: GenerationRequest, torch_pipeline: bool = False):
    if torch_pipeline:
        from reverie.methods.diffusion.run import run

        return run(request.model_copy(update={"runtime": "torch"}), MODELS, Progress(), Outputs(tmp_path / name))
    return compiled.run(request, MODELS, Progress(), Outputs(tmp_path / name))


def assert_torchs(tmp_path, name: str, request: GenerationRequest, floor: float = 60.0) -> list[Image.Image]:
    """This path's pictures for `request`, each the torch pipeline's to `floor` dB."""
    assert compiled.serves(request), name
    ours, theirs = make(tmp_path, name, request), make(tmp_path, name + "-torch", request, torch_pipeline=True)
    for a, b in zip(ours.images, theirs.images, strict=True):
        assert psnr(pixels(a.image), pixels(b.image)) > floor, (name, psnr(pixels(a.image), pixels(b.image)))
    assert ours.images[0].metadata["settings"]["runtime"] == "openvino"
    return [image.image for image in ours.images]


def test_it_serves_sdxl_base_and_leaves_the_rest_to_the_torch_pipeline(sdxl_model, tmp_path):
    for path in (sdxl_model["folder"], sdxl_model["file"]):
        assert sd_source(path).sdxl and compiled.serves(request_for(path)), path
    folder = sdxl_model["folder"]
    assert compiled.serves(request_for(folder, width=1024, height=1024, n_samples=4, step_cache=2))
    refused = [dict(width=1536, height=1024),  # its activations: more than one evaluation here takes
               dict(quantize="int8"), dict(prompt="a red apple <lora:any:1>"), dict(refiner=str(folder)),
               dict(runtime="torch")]
    assert compiled.serves(request_for(folder, sampler="dpmpp_sde_karras"))
    for fields in refused:
        assert not compiled.serves(request_for(folder, **fields)), fields
    from test_sdxl import tiny_sdxl

    refiner = save_folder(tiny_sdxl(refiner=True), tmp_path / "refiner")
    assert sd_source(refiner) is None  # bigG alone, aesthetic-score ids: the torch pipeline's


def test_its_conditioning_is_the_torch_pipelines(sdxl_model):
    """Both encoders' penultimate states side by side, weighted per window; bigG's pooled text of
    the first window; a long prompt's two windows; an empty negative all zeros (SDXL base's
    force_zeros_for_empty_prompt): conditioning.encode_sdxl_prompt_batch's, to fp32's rounding."""
    from reverie.models.registry import load_model
    from reverie.prompts.conditioning import encode_sdxl_prompt_batch

    request = request_for(sdxl_model["folder"])
    found = compiled.served(request)
    bundle = compiled.load_bundle(MODELS, found.source, "f32")
    pairs = [(LONG, ""), ("a (red:1.5) apple", "blue, [green]"), ("", "")]
    ours = compiled.encode_pairs(pairs, compiled.BundleTokenizer.all_of(bundle), bundle, {}, zero_empty_negative=True)
    components = load_model(str(sdxl_model["folder"]))
    encoders = [(components.tokenizer, components.text_encoder), (components.tokenizer_2, components.text_encoder_2)]
    theirs = encode_sdxl_prompt_batch(pairs, encoders, zero_empty_negative=True)
    for name, mine, torchs in (("cond", ours.cond, theirs.cond), ("uncond", ours.uncond, theirs.uncond),
                               ("pooled", ours.pooled, theirs.pooled),
                               ("negative_pooled", ours.negative_pooled, theirs.negative_pooled)):
        assert mine.shape == tuple(torchs.shape), name
        assert np.abs(mine - torchs.numpy()).max() < 1e-4 * max(1.0, float(torchs.abs().max())), name
    assert ours.cond.shape[1] == 2 * 77 and ours.cond.shape[2] == L_WIDTH + G_WIDTH
    assert not ours.uncond[0].any() and not ours.negative_pooled[0].any() and ours.uncond[1].any()
    assert np.abs(ours.pooled[0] - ours.pooled[1]).max() > 1e-3  # the prompts' pooled texts differ


def test_its_pictures_are_the_torch_pipelines_and_follow_the_prompt(sdxl_model, tmp_path):
    """fp32: the torch pipeline's pictures (measured identical); bf16 as close as the two
    runtimes' bf16 get; a folder and a single file; a weighted, a long and a negative prompt, a
    wide picture (its size in the UNet's time ids), a stochastic sampler, step caching and
    seamless tiles."""
    folder = sdxl_model["folder"]
    first = assert_torchs(tmp_path, "plain", request_for(folder, prompt="a (red:1.3) apple", n_samples=2))
    assert psnr(pixels(first[0]), pixels(first[1])) < 30  # the seeds' pictures differ
    for name, fields, floor in (
            ("negative", dict(negative_prompt="blue, [green]", sampler="dpmpp_2m_karras"), 60),
            ("long", dict(prompt=LONG, sampler="euler_a", n_samples=2), 60),
            ("wide", dict(width=128, height=64), 60),
            ("step-cache", dict(step_cache=2, steps=5), 60),
            ("tile", dict(tile=True), 60)):
        assert_torchs(tmp_path, name, request_for(folder, **fields), floor)
    # bf16: as close to the fp32 picture as the torch pipeline's bf16 (42.5 dB): the
    # timestep's and size ids' sinusoids in f32 (openvino_bundle.sinusoids_in_f32; in bf16: 26 dB)
    bf16 = request_for(folder, prompt="a (red:1.3) apple", dtype="bf16")
    ours, theirs = make(tmp_path, "bf16", bf16).images[0], make(tmp_path, "bf16-torch", bf16, torch_pipeline=True).images[0]
    assert ours.metadata["settings"]["ran_dtype"] == "bf16"
    assert psnr(pixels(ours.image), pixels(first[0])) > psnr(pixels(theirs.image), pixels(first[0])) - 3
    assert_torchs(tmp_path, "file", request_for(sdxl_model["file"], prompt="a (red:1.3) apple", n_samples=2))
    # the text reaches the UNet: another prompt, or a negative, another picture from the same seed
    apple = make(tmp_path, "apple", request_for(folder)).images[0].image
    for fields in (dict(prompt="a storm over the sea, at night"), dict(negative_prompt="blue")):
        assert psnr(pixels(make(tmp_path, "other", request_for(folder, **fields)).images[0].image), pixels(apple)) < 30


def test_the_unet_is_given_the_pooled_text_and_the_pictures_size(sdxl_model, tmp_path, monkeypatch):
    """Each UNet evaluation: the CFG pair's states, pooled texts (the negative's first) and time
    ids saying a picture of this very size, not cropped: [height, width, 0, 0, height, width]."""
    calls = []
    call = OpenVINOBundle.__call__

    def recorded(self, part, *inputs, **options):
        if part == "unet":
            calls.append(inputs)
        return call(self, part, *inputs, **options)

    monkeypatch.setattr(OpenVINOBundle, "__call__", recorded)
    make(tmp_path, "wide", request_for(sdxl_model["folder"], width=128, height=64, negative_prompt="blue"))
    assert len(calls) == 4
    latents, _, states, pooled, time_ids = calls[0]
    assert latents.shape == (2, 4, 8, 16) and states.shape[0] == pooled.shape[0] == 2 and pooled.shape[1] == G_WIDTH
    assert time_ids.tolist() == [[64, 128, 0, 0, 64, 128]] * 2
    assert np.abs(pooled[0] - pooled[1]).max() > 1e-3  # "blue"'s, then "a red apple"'s


def test_image_modes_are_the_torch_pipelines(sdxl_model, tmp_path):
    """img2img, variations, inpaint and outpaint: from each seed's same latents and noise, the
    kept pixels put back."""
    folder = sdxl_model["folder"]
    source = make(tmp_path, "source", request_for(folder)).images[0].path
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "mask.png")
    for fields in (dict(mode="img2img", prompt="a storm at sea", strength=0.7, n_samples=2),
                   dict(mode="variations", prompt=""),
                   dict(mode="inpaint", prompt="a storm at sea", mask_image=str(tmp_path / "mask.png"), strength=0.8),
                   dict(mode="outpaint", prompt="a storm at sea", outpaint_right=64)):
        request = request_for(folder, init_image=str(source), width=None, height=None, **fields)
        made = assert_torchs(tmp_path, fields["mode"], request)[0]
        given = Image.open(source).convert("RGB")
        if fields["mode"] in ("img2img", "variations"):
            assert psnr(pixels(made), pixels(given)) < 40  # it moved from its input
        else:  # inpaint repaints the left half; outpaint keeps the picture and draws 64 px right of it
            kept, moved = ((32, 0, 64, 64), (0, 0, 32, 64)) if fields["mode"] == "inpaint" else ((0, 0, 64, 64), None)
            assert psnr(pixels(made.crop(kept)), pixels(given.crop(kept))) > 35
            if moved:
                assert psnr(pixels(made.crop(moved)), pixels(given.crop(moved))) < 30
            else:
                assert made.size == (128, 64) and pixels(made.crop((64, 0, 128, 64))).std() > 10


def test_an_sdxl_inpainting_model_is_the_torch_pipelines(sdxl_model, tmp_path):
    """An SDXL inpainting model (a 9-channel UNet: the mask and the masked picture's latents
    beside the latents): inpaint, from noise and at a strength below 1, and outpaint as
    diffusers' SDXL inpaint pipeline runs it; txt2img stays run.py's."""
    folder = save_folder(lively_sdxl(seed=1, in_channels=9), tmp_path / "lively-sdxl-inpainting")
    assert sd_source(folder).inpainting and sd_source(folder).sdxl
    source = make(tmp_path, "source", request_for(sdxl_model["folder"])).images[0].path
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "mask.png")
    for fields in (dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), strength=1.0),
                   dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), strength=0.7),
                   dict(mode="outpaint", outpaint_right=64)):
        request = request_for(folder, prompt="a storm at sea", init_image=str(source), width=None, height=None,
                              **fields)
        made = assert_torchs(tmp_path, f"{fields['mode']}-{fields.get('strength')}", request)[0]
        given = Image.open(source).convert("RGB")
        assert psnr(pixels(made.crop((32, 0, 64, 64))), pixels(given.crop((32, 0, 64, 64)))) > 35  # kept
    assert not compiled.serves(request_for(folder))


def test_the_command_makes_sdxl_pictures_without_importing_torch(sdxl_model, tmp_path):
    """`reverie generate --model FOLDER` with the bundle made (by the first command): torch,
    diffusers and transformers are never imported."""
    generate_twice_without_torch(tmp_path, 2, "a red apple", "--model", str(sdxl_model["folder"]), "-n", "2",
                                 "--steps", "3", "--seed", "5", "-W", "64", "-H", "64")


def test_a_tiny_decoder_is_taesdxl_here_as_on_the_torch_pipeline(sdxl_model, tmp_path, monkeypatch):
    """`decoder tiny` for SDXL: the models folder's taesdxl/ (not its taesd/, SD's) makes the
    pictures, the torch pipeline's TAESDXL pictures, and draws the live previews."""
    from diffusers import AutoencoderTiny
    from test_speed_options import random_taesd

    models = tmp_path / "models"
    random_taesd().save_pretrained(models / "taesd")
    torch.manual_seed(1)
    AutoencoderTiny().eval().save_pretrained(models / "taesdxl")  # another TAESD: other weights
    monkeypatch.setenv("REVERIE_MODELS", str(models))
    request = request_for(sdxl_model["folder"], decoder="tiny", n_samples=2)
    made = assert_torchs(tmp_path, "tiny", request, floor=45)
    by_vae = make(tmp_path, "vae", request.model_copy(update={"decoder": "vae"})).images
    for picture, other in zip(made, by_vae, strict=True):
        assert psnr(pixels(picture), pixels(other.image)) < 30  # another decoder's picture of the same latents
    events = []
    compiled.run(request, MODELS, Progress(report=events.append, previews=True), Outputs(tmp_path / "watched"))
    last = [event.preview for event in events if event.preview is not None][-1]
    assert np.array_equal(np.asarray(last.convert("RGB")), np.hstack([pixels(p) for p in made]).astype(np.uint8))


def test_a_large_text_encoder_is_let_go_once_the_prompts_are_encoded(sdxl_model, tmp_path, monkeypatch):
    """A text encoder of FORGET_TEXT_BYTES or more (SDXL's bigG: 1.8 GiB compiled) is not held
    through the steps and the decode: compiled again for the next request's prompts, which make
    the same pictures."""
    from reverie.models import openvino_bundle

    request = request_for(sdxl_model["folder"], prompt="a (red:1.3) apple", n_samples=2)
    held = make(tmp_path, "held", request)
    bundle = MODELS.find(lambda key: key[0] == "openvino-bundle" and key[1] == str(sdxl_model["folder"]))
    assert bundle._compiled["text_encoder_2"] and bundle._compiled["unet"]
    monkeypatch.setattr(openvino_bundle, "FORGET_TEXT_BYTES", 0)  # the toy encoders stand for bigG
    for name in ("first", "again"):
        made = make(tmp_path, name, request)
        assert not bundle._compiled["text_encoder"] and not bundle._compiled["text_encoder_2"]
        assert bundle._compiled["unet"] and bundle._compiled["decoder"]
        for a, b in zip(made.images, held.images, strict=True):
            assert np.array_equal(pixels(a.image), pixels(b.image))


def test_an_sdxl_lora_runs_here_once_the_torch_path_made_its_exports(sdxl_model, tmp_path, monkeypatch):
    """An SDXL LoRA in kohya's layout, with layers for the UNet and both text encoders: its first
    request with runtime openvino, on the torch pipeline, exports the UNet and the two text
    encoders with it on; from then on this path runs them in the bundle's parts' places, without
    torch, and makes the torch pipeline's picture. A LoRA of bigG's layers alone runs with the
    bundle's own UNet and CLIP ViT-L, and its layers count."""
    from safetensors.torch import save_file

    from test_sdxl import sdxl_kohya_lora
    from reverie.methods.diffusion.run import run
    from reverie.models.sd_bundle import lora_text_encoder_folder

    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    layers = sdxl_kohya_lora(lively_sdxl(), 5)
    save_file(layers, str(models / "Lora" / "xlink.safetensors"))
    save_file({k: v for k, v in layers.items() if k.startswith("lora_te2_")}, str(models / "Lora" / "bigg.safetensors"))
    monkeypatch.setenv("REVERIE_MODELS", str(models))
    folder = sdxl_model["folder"]
    plain = make(tmp_path, "plain", request_for(folder, prompt="a lighthouse", steps=3)).images[0].image
    for tag in ("<lora:xlink:1>", "<lora:bigg:1>"):
        request = request_for(folder, prompt=f"a lighthouse {tag}", steps=3)
        assert not compiled.serves(request), tag
        run(request.model_copy(update={"runtime": "openvino"}), MODELS, Progress(), Outputs(tmp_path / f"first{tag}"))
        ours = assert_torchs(tmp_path, f"ours{tag}", request)[0]
        assert psnr(pixels(ours), pixels(plain)) < 40, tag  # the LoRA ran
    found = compiled.served(request)
    assert found.loras["unet"] is None  # bigG's layers alone: the bundle's own UNet
    made = lora_text_encoder_folder(sd_source(folder), "f32", found.loras["text"])
    assert {p.name for p in made.glob("*.xml")} == {"text_encoder.xml", "text_encoder_2.xml"}


def test_an_sdxl_embedding_is_the_torch_pipelines(sdxl_model, tmp_path, monkeypatch):
    """An SDXL textual-inversion embedding (CLIP ViT-L's and bigG's vectors): each encoder takes
    its own rows for the tokens, as the torch pipeline loads them; the picture is the torch
    pipeline's and moves with the vectors. An SD 1.x embedding (one encoder's) stays run.py's."""
    from safetensors.numpy import save_file

    embeddings = tmp_path / "models" / "embeddings"
    embeddings.mkdir(parents=True)
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    rng = np.random.default_rng(3)
    vectors = {"clip_l": rng.standard_normal((2, L_WIDTH)), "clip_g": rng.standard_normal((2, G_WIDTH))}
    save_file({k: (v * 0.5).astype(np.float32) for k, v in vectors.items()}, embeddings / "harbour-mood.safetensors")
    save_file({"emb_params": np.ones((1, L_WIDTH), np.float32)}, embeddings / "sd-only.safetensors")
    folder = sdxl_model["folder"]
    ours = assert_torchs(tmp_path, "ours", request_for(folder, prompt="a harbour-mood lighthouse", steps=3))[0]
    plain = make(tmp_path, "plain", request_for(folder, prompt="a lighthouse", steps=3)).images[0].image
    assert psnr(pixels(ours), pixels(plain)) < 40  # the vectors reached the UNet
    assert not compiled.serves(request_for(folder, prompt="a sd-only lighthouse"))
