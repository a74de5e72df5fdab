"""SDXL base and refiner: single files in the original (SGM) layout, diffusers folders, every mode.

The models are random-weight SDXL at toy width with SDXL's real architecture: two text encoders
(a CLIP ViT-L-shaped CLIPTextModel and a bigG-shaped CLIPTextModelWithProjection, of different
widths as the real ones are), the "text_time" added embedding (pooled text + size/crop time ids),
linear transformer projections, a first level without attention, and two transformer layers in
the deepest blocks. Pictures are 64 px, two steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import pixels, psnr, run_cli
from reverie.errors import BadCheckpoint, BadRequest
from reverie.models.clip_tokenizer import VOCAB_SIZE, clip_tokenizer
from reverie.models.components import ModelComponents
from reverie.models.checkpoint_header import CONFIGS_DIR
from reverie.models.sdxl import OPEN_CLIP_PAD_TOKEN
from reverie.models.sdxl_layout import save_sdxl_single_file, to_sgm_state_dict
from reverie.models.single_file import load_single_file
from reverie.outputs.metadata import parse_a1111_parameters, read_png_info
from reverie.prompts.conditioning import encode_sdxl_prompt_batch
from reverie.studio import make_request

L_WIDTH, G_WIDTH, TIME_DIM = 32, 64, 8
FAST = dict(steps=2, cfg_scale=5.0, width=64, height=64, n_samples=1, sampler="euler")


def _clip(hidden: int, act: str, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=VOCAB_SIZE, hidden_act=act, projection_dim=hidden,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def tiny_sdxl(refiner: bool = False, seed: int = 0) -> ModelComponents:
    """SDXL base (or refiner: bigG alone, aesthetic-score time ids) at toy width, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    text_width = G_WIDTH if refiner else L_WIDTH + G_WIDTH
    time_ids = 5 if refiner else 6
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 8), use_linear_projection=True,
        cross_attention_dim=text_width, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=G_WIDTH + time_ids * TIME_DIM,
    )
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=64,
                        scaling_factor=0.13025, force_upcast=True)
    text_encoder = None if refiner else _clip(L_WIDTH, "quick_gelu", projection=False)
    text_encoder_2 = _clip(G_WIDTH, "gelu", projection=True)
    modules = [m for m in (unet, vae, text_encoder, text_encoder_2) if m is not None]
    with torch.no_grad():
        for model in modules:
            for p in model.parameters():
                p.normal_(0.0, 0.05)
    for model in modules:
        model.eval().requires_grad_(False)
    scheduler = dict(__import__("json").loads((CONFIGS_DIR / "sdxl" / "scheduler" / "scheduler_config.json").read_text()))
    return ModelComponents(
        name="tiny-sdxl-refiner" if refiner else "tiny-sdxl", unet=unet, vae=vae, text_encoder=text_encoder,
        tokenizer=None if refiner else clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN), scheduler_config=scheduler,
        family="sdxl-refiner" if refiner else "sdxl",
    )


def save_folder(components: ModelComponents, folder):
    """The components as a diffusers folder, as the published SDXL repositories lay it out."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler.from_config(components.scheduler_config)
    parts = dict(vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
                 tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
                 scheduler=scheduler)
    if components.family == "sdxl-refiner":
        pipe = StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    else:
        pipe = StableDiffusionXLPipeline(**parts)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory):
    """models/ with tiny-sdxl (folder), tiny-sdxl.safetensors (single file, as its own name) and a refiner."""
    root = tmp_path_factory.mktemp("sdxl")
    models = root / "models"
    models.mkdir()
    base, refiner = tiny_sdxl(), tiny_sdxl(refiner=True, seed=1)
    save_folder(base, models / "tiny-sdxl")
    save_folder(refiner, models / "tiny-sdxl-refiner")
    save_sdxl_single_file(base, models / "tiny-sdxl-file.safetensors")
    save_sdxl_single_file(refiner, root / "tiny-sdxl-refiner-file.safetensors")
    return dict(root=root, models=models, base=base, refiner=refiner)


@pytest.fixture
def sdxl_models(sdxl_files, monkeypatch):
    """REVERIE_MODELS at the SDXL models, and the toy-width configs in place of the shipped ones
    (a single file carries no config: the real configs would not fit toy weights)."""
    import reverie.models.sdxl as sdxl

    monkeypatch.setenv("REVERIE_MODELS", str(sdxl_files["models"]))
    monkeypatch.setattr(sdxl, "shipped_sdxl_config_dir",
                        lambda family: sdxl_files["models"] / ("tiny-sdxl" if family == "sdxl" else "tiny-sdxl-refiner"))
    return sdxl_files


def same_weights(expected, actual):
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- configs and layout


def test_shipped_configs_are_the_published_sdxl_architectures():
    """Parameter counts of SDXL 1.0 base (UNet 2,567,463,684; bigG with projection 694,659,840)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(model):
        return sum(p.numel() for p in model.parameters())

    base, refiner = CONFIGS_DIR / "sdxl", CONFIGS_DIR / "sdxl-refiner"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(base / "vae"))
        clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(base / "text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(base / "text_encoder_2"))
        refiner_unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(refiner / "unet"))
    assert (count(unet), count(vae), count(clip_l), count(clip_g)) == (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)
    assert unet.config.cross_attention_dim == 768 + 1280 and unet.config.addition_embed_type == "text_time"
    assert refiner_unet.config.cross_attention_dim == 1280
    assert refiner_unet.config.projection_class_embeddings_input_dim == 1280 + 5 * 256  # aesthetic score, no target size
    assert vae.config.force_upcast and vae.config.scaling_factor == 0.13025
    assert not (refiner / "text_encoder").exists()


def test_single_file_has_the_original_key_layout_and_loads_back_exactly(sdxl_files):
    base = sdxl_files["base"]
    path = sdxl_files["models"] / "tiny-sdxl-file.safetensors"
    state = load_file(str(path))
    # Names as in sd_xl_base_1.0.safetensors.
    for key in ("model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.2.bias",
                "model.diffusion_model.input_blocks.0.0.weight",
                "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.0.proj.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",
                "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.3.block.0.conv1.weight",
                "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                "conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight",
                "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.positional_embedding",
                "conditioner.embedders.1.model.ln_final.weight", "conditioner.embedders.1.model.logit_scale"):
        assert key in state, key
    assert not any(k.startswith(("cond_stage_model.", "text_encoder")) for k in state)
    # bigG's projection is stored [width, projection], the transpose of the Linear weight.
    assert torch.equal(state["conditioner.embedders.1.model.text_projection"],
                       base.text_encoder_2.text_projection.weight.T)

    # diffusers' converters read it back to the very same weights ...
    loaded = load_single_file(path, config_dir=sdxl_files["models"] / "tiny-sdxl")
    assert loaded.family == "sdxl" and loaded.is_sdxl
    for original, read in ((base.unet, loaded.unet), (base.vae, loaded.vae), (base.text_encoder, loaded.text_encoder),
                           (base.text_encoder_2, loaded.text_encoder_2)):
        same_weights(original, read)
    # ... and our map writes the loaded model back to the very same file contents.
    again = to_sgm_state_dict(loaded.unet, loaded.vae, loaded.text_encoder, loaded.text_encoder_2)
    assert again.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(again[key].contiguous(), value), key
    assert loaded.tokenizer.pad_token == "<|endoftext|>" and loaded.tokenizer_2.pad_token == "!"


def test_refiner_single_file_has_bigg_alone(sdxl_files):
    path = sdxl_files["root"] / "tiny-sdxl-refiner-file.safetensors"
    state = load_file(str(path))
    assert "conditioner.embedders.0.model.text_projection" in state
    assert not any(k.startswith("conditioner.embedders.1.") for k in state)
    loaded = load_single_file(path, config_dir=sdxl_files["models"] / "tiny-sdxl-refiner")
    assert loaded.family == "sdxl-refiner" and loaded.text_encoder is None
    same_weights(sdxl_files["refiner"].text_encoder_2, loaded.text_encoder_2)
    same_weights(sdxl_files["refiner"].unet, loaded.unet)


def test_neither_sd_nor_sdxl_is_refused_clearly(tmp_path):
    # An SGM-style file whose embedders are neither SDXL base's nor its refiner's (e.g. SVD/SD3-like).
    tensors = {"conditioner.embedders.0.open_clip.model.visual.proj": torch.zeros(4, 4),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 8, 3, 3)}
    path = tmp_path / "other.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(BadCheckpoint, match="not a Stable Diffusion 1.x/2.x or SDXL checkpoint.*neither SDXL"):
        load_single_file(path)


def test_sdxl_text_encoders_over_a_foreign_unet_are_refused(sdxl_files, tmp_path):
    state = load_file(str(sdxl_files["models"] / "tiny-sdxl-file.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("model.diffusion_model.label_emb.")}
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    with pytest.raises(BadCheckpoint, match="size/crop embedding"):
        load_single_file(path, config_dir=sdxl_files["models"] / "tiny-sdxl")


# ----------------------------------------------------------------------------- conditioning


def test_weighting_changes_both_encoders_states_and_long_prompts_are_chunked(sdxl_files):
    base = sdxl_files["base"]
    encoders = [(base.tokenizer, base.text_encoder), (base.tokenizer_2, base.text_encoder_2)]
    plain = encode_sdxl_prompt_batch([("a cat on a mat", "")], encoders, zero_empty_negative=True)
    weighted = encode_sdxl_prompt_batch([("a (cat:1.5) on a mat", "")], encoders, zero_empty_negative=True)
    assert plain.cond.shape == (1, 77, L_WIDTH + G_WIDTH) and plain.pooled.shape == (1, G_WIDTH)
    for part in (slice(0, L_WIDTH), slice(L_WIDTH, None)):  # CLIP-L's states, then bigG's
        assert not torch.allclose(plain.cond[..., part], weighted.cond[..., part])
    # The pooled text is the unweighted projection, as A1111 takes it; an empty negative is zeros (SDXL base).
    assert torch.allclose(plain.pooled, weighted.pooled)
    assert not plain.uncond.any() and not plain.negative_pooled.any()
    # Penultimate layer, first chunk's EOS, as diffusers' own SDXL encode_prompt computes them.
    ids_l = base.tokenizer("a cat on a mat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids_g = base.tokenizer_2("a cat on a mat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out_l = base.text_encoder(ids_l, output_hidden_states=True)
        out_g = base.text_encoder_2(ids_g, output_hidden_states=True)
    expected = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
    assert torch.allclose(plain.cond, expected, atol=1e-5)
    assert torch.allclose(plain.pooled, out_g.text_embeds, atol=1e-5)
    long = encode_sdxl_prompt_batch([(", ".join(["a red cat"] * 20), "blurry")], encoders)
    assert long.cond.shape[1] == 2 * 77 and long.uncond.shape == long.cond.shape


# ----------------------------------------------------------------------------- every mode, studio and CLI


def test_the_models_folder_lists_sdxl_and_the_studio_uses_it_by_name(sdxl_models, studio):
    from reverie.models.registry import list_models

    names = {entry.name: entry.kind for entry in list_models()}
    assert names["tiny-sdxl"] == "diffusers" and names["tiny-sdxl-file"] == "single-file"
    first = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse", seed=7, **FAST))
    again = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse", seed=7, **FAST))
    other = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse", seed=8, **FAST))
    assert first.images[0].image.size == (64, 64)
    assert np.array_equal(pixels(first.images[0].image), pixels(again.images[0].image))
    assert not np.array_equal(pixels(first.images[0].image), pixels(other.images[0].image))
    # The single file of the same weights makes the same picture.
    from_file = studio.generate(make_request(model="tiny-sdxl-file", prompt="a lighthouse", seed=7, **FAST))
    assert np.abs(pixels(from_file.images[0].image) - pixels(first.images[0].image)).max() <= 1


def test_every_image_mode_runs(sdxl_models, studio, photo, tmp_path):
    mask = np.zeros((72, 88), dtype=np.uint8)
    mask[16:48, 24:64] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    source = pixels(Image.open(photo))
    size = dict(FAST, width=None, height=None)
    for fields in ({"mode": "img2img", "init_image": photo, "strength": 0.6},
                   {"mode": "variations", "init_image": photo},
                   {"mode": "inpaint", "init_image": photo, "mask_image": str(mask_path)},
                   {"mode": "outpaint", "init_image": photo, "outpaint_right": 16}):
        result = studio.generate(make_request(model="tiny-sdxl-file", prompt="a harbour", seed=3, **size, **fields))
        out = pixels(result.images[0].image)
        if fields["mode"] == "outpaint":
            assert out.shape == (72, 104, 3) and np.array_equal(out[:, :88], source)
        else:
            assert out.shape == source.shape
            if fields["mode"] == "inpaint":
                assert np.array_equal(out[mask == 0], source[mask == 0])
            else:
                assert not np.array_equal(out, source)


def test_an_sdxl_model_makes_videos_and_a_walks_stop_is_its_picture(sdxl_models, studio, tmp_path):
    """A walk's stop is the picture its prompt and seed make alone (the torch pipeline both run
    on); an animation and a restyle of the walk run on it too, with their pooled text blended."""
    from reverie.methods.diffusion.run import run
    from reverie.outputs.files import Outputs
    from reverie.progress import Progress
    from test_video import frames_of

    settings = dict(model="tiny-sdxl", steps=2, cfg_scale=5.0, width=64, height=64, sampler="euler", upscale=1)
    walk = studio.video("walk", ["a lighthouse", "a harbour at night"], seeds=[7, 8], frames=3, keep_frames=True,
                        outdir=tmp_path / "walk", **settings)
    alone = [run(make_request(prompt=prompt, seed=seed, n_samples=1, **settings), studio.models, Progress(),
                 Outputs(tmp_path / "alone")).images[0].image for prompt, seed in (("a lighthouse", 7), ("a harbour at night", 8))]
    frames = frames_of(walk.run_dir)
    assert np.array_equal(pixels(frames[0]), pixels(alone[0])) and np.array_equal(pixels(frames[-1]), pixels(alone[1]))
    assert not np.array_equal(pixels(frames[1]), pixels(frames[0]))
    animation = studio.video("animate", "0: a lighthouse | 2: a harbour at night", frames=3, zoom="0:(1.1)",
                             strength="0:(0.5)", outdir=tmp_path / "animate", **settings)
    restyled = studio.video("restyle", "0: an oil painting", video_input=walk.videos[0], strength="0:(0.5)",
                            coherence="0:(0.3)", outdir=tmp_path / "restyle", **settings)
    assert animation.frames == 3 and restyled.frames == 3


def test_cli_generates_with_an_sdxl_single_file(sdxl_models, monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a fox", "--model", "tiny-sdxl-file", "--steps", "2",
                             "--width", "64", "--height", "64", "--n-samples", "1", "--seed", "5", "--device", "cpu",
                             "--outdir", str(tmp_path))
    assert code == 0, err
    written = sorted(tmp_path.glob("*.png"))
    assert written and "Model: tiny-sdxl-file" in read_png_info(written[0])["parameters"]


def test_refiner_stage_runs_and_is_recorded(sdxl_models, studio, monkeypatch, capsys, tmp_path):
    plain = studio.generate(make_request(model="tiny-sdxl", prompt="a boat", seed=11, **FAST))
    refined = studio.generate(make_request(model="tiny-sdxl", prompt="a boat", seed=11, refiner="tiny-sdxl-refiner",
                                           refiner_switch=0.5, **(FAST | {"steps": 4})))
    again = studio.generate(make_request(model="tiny-sdxl", prompt="a boat", seed=11, refiner="tiny-sdxl-refiner",
                                         refiner_switch=0.5, **(FAST | {"steps": 4})))
    assert np.array_equal(pixels(refined.images[0].image), pixels(again.images[0].image))
    assert not np.array_equal(pixels(plain.images[0].image), pixels(refined.images[0].image))
    parameters = refined.images[0].parameters
    assert "Refiner: tiny-sdxl-refiner, Refiner switch at: 0.5" in parameters
    assert parse_a1111_parameters(parameters)["refiner"] == "tiny-sdxl-refiner"
    hashed = parameters.replace("Refiner: tiny-sdxl-refiner,", "Refiner: tiny-sdxl-refiner [0123abcd],")
    assert parse_a1111_parameters(hashed)["refiner"] == "tiny-sdxl-refiner"  # A1111 adds the file's hash
    # The CLI's flags, in an image mode too.
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a boat", "--model", "tiny-sdxl", "--refiner",
                             "tiny-sdxl-refiner", "--refiner-switch", "0.6", "--steps", "3", "--width", "64",
                             "--height", "64", "--n-samples", "1", "--seed", "5", "--device", "cpu",
                             "--outdir", str(tmp_path / "cli"))
    assert code == 0, err
    written = sorted((tmp_path / "cli").glob("*.png"))
    assert "Refiner switch at: 0.6" in read_png_info(written[0])["parameters"]
    img2img = studio.generate(make_request(model="tiny-sdxl", mode="img2img", init_image=str(written[0]), prompt="a boat",
                                           seed=2, strength=0.5, refiner="tiny-sdxl-refiner", **FAST))
    assert img2img.images[0].image.size == (64, 64)


def test_refiner_needs_sdxl_on_both_sides(sdxl_models, studio):
    with pytest.raises(BadRequest, match="refiner"):
        studio.generate(make_request(model="tiny-random", prompt="x", seed=1, refiner="tiny-sdxl-refiner", **FAST))
    with pytest.raises(BadRequest, match="refiner"):
        studio.generate(make_request(model="tiny-sdxl", prompt="x", seed=1, refiner="tiny-random", **FAST))


def test_memory_estimate_counts_sdxl_and_its_float32_vae():
    from reverie.device import estimate_peak_bytes

    common = dict(width=1024, height=1024, batch=1, latent_channels=4, vae_scale=8, dtype=torch.float16, vae_tiling=False)
    sd = estimate_peak_bytes(**common)
    sdxl = estimate_peak_bytes(**common, unet_scale=2.0, vae_dtype=torch.float32)
    assert sdxl > sd
    assert estimate_peak_bytes(**common, vae_dtype=torch.float32) - sd == 1024 * 1024 * 128 * 6 * 2


def test_a_vae_upcast_for_one_decode_is_put_back_even_when_it_fails():
    """diffusers moves SDXL's VAE to float32 for each decode (it overflows in float16); the cached
    VAE must come back in its own dtype, also when the decode fails midway."""
    from reverie.methods.diffusion.pipelines import vae_dtype_kept

    components = tiny_sdxl()
    components.vae.to(torch.bfloat16)
    with pytest.raises(RuntimeError):
        with vae_dtype_kept(components):
            components.vae.to(torch.float32)  # as diffusers' upcast does
            raise RuntimeError("stopped mid-decode")
    assert components.vae.dtype == torch.bfloat16


def sdxl_kohya_lora(components: ModelComponents, seed: int, rank: int = 4) -> dict:
    """An SDXL LoRA as kohya writes one: `lora_unet_<module path>`, `lora_te1_` (CLIP-L) and
    `lora_te2_` (bigG) text-encoder layers, each with its alpha."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    parts = (("lora_unet_", components.unet, ("to_q", "to_k", "to_v", "to_out.0")),
             ("lora_te1_text_model_", components.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj")),
             ("lora_te2_text_model_", components.text_encoder_2, ("q_proj", "k_proj", "v_proj", "out_proj")))
    for prefix, module, targets in parts:
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.Linear) and name.endswith(targets):
                key = prefix + name.removeprefix("text_model.").replace(".", "_")
                state[key + ".lora_down.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.3
                state[key + ".lora_up.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.3
                state[key + ".alpha"] = torch.tensor(float(rank) / 2)
    return state


def test_an_sdxl_lora_applies_to_the_unet_and_both_text_encoders(sdxl_models, studio):
    from safetensors.torch import save_file

    from reverie.models.lora import find_lora, lora_info

    (sdxl_models["models"] / "Lora").mkdir(exist_ok=True)
    save_file(sdxl_kohya_lora(sdxl_models["base"], 5), str(sdxl_models["models"] / "Lora" / "xlink.safetensors"))
    assert lora_info(find_lora("xlink")).base == "sdxl"
    base = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse", seed=7, **FAST)).images[0].image
    zero = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse <lora:xlink:0>", seed=7, **FAST))
    text_only = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse <lora:xlink:0:1>", seed=7, **FAST))
    full = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse <lora:xlink:1>", seed=7, **FAST))
    assert np.array_equal(pixels(zero.images[0].image), pixels(base))
    assert not np.array_equal(pixels(text_only.images[0].image), pixels(base))  # the text encoders took it
    assert not np.array_equal(pixels(full.images[0].image), pixels(text_only.images[0].image))
    assert "Lora hashes" in full.images[0].parameters
    again = studio.generate(make_request(model="tiny-sdxl", prompt="a lighthouse", seed=7, **FAST)).images[0].image
    assert np.array_equal(pixels(again), pixels(base))  # the cached model is the base again


# ----------------------------------------------------------------------------- on OpenVINO (issue 22)


def _openvino():
    return pytest.importorskip("openvino", reason="the openvino package is not installed "
                                                  "(pip install -r requirements-speed.txt): the OpenVINO runtime is optional")


@pytest.mark.parametrize("refiner", [False, True], ids=["base", "refiner"])
def test_an_sdxl_unets_export_takes_its_pooled_text_and_time_ids(refiner, tmp_path):
    """The export's two added inputs are the torch UNet's `added_cond_kwargs`: its output is
    torch's for the base's six size/crop ids and the refiner's five (size, crop, aesthetic
    score), and moves as torch's does when only the ids or only the pooled text change (the toy
    UNet's response to them is small: 1e-3 of its output; the export's error is 1e-3 of that)."""
    _openvino()
    from reverie.models.openvino_runtime import OpenVINOUNet

    unet = tiny_sdxl(refiner=refiner).unet
    exported = OpenVINOUNet.load(unet, cache=tmp_path)
    g = torch.Generator().manual_seed(0)
    width = unet.config.projection_class_embeddings_input_dim - (5 if refiner else 6) * TIME_DIM
    sample, states = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    pooled = torch.randn(2, width, generator=g)
    sizes = torch.tensor([[1024.0, 1024, 0, 0, 6.0] if refiner else [1024.0, 1024, 0, 0, 1024, 1024]] * 2)
    other_sizes = sizes.clone()
    other_sizes[:, 0] = 512.0
    outputs = {}
    for name, (text_embeds, time_ids) in {"plain": (pooled, sizes), "ids": (pooled, other_sizes),
                                          "pooled": (pooled.flip(0), sizes)}.items():
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        with torch.no_grad():
            expected = unet(sample, torch.tensor(500), encoder_hidden_states=states, added_cond_kwargs=added).sample
        made = exported(sample, torch.tensor(500), states, added_cond_kwargs=added).sample
        assert torch.allclose(made, expected, atol=1e-5), name
        outputs[name] = (made, expected)
    for name in ("ids", "pooled"):
        moved = outputs[name][1] - outputs["plain"][1]
        assert moved.norm() > 1e-4, name  # torch's output does depend on it
        assert (outputs[name][0] - outputs["plain"][0] - moved).norm() < 0.01 * moved.norm(), name
    with pytest.raises(NotImplementedError, match="takes 5 inputs, and was given 3"):
        exported(sample, torch.tensor(500), states)


def test_sdxl_pictures_on_openvino_are_torchs_and_recorded(sdxl_models, studio, photo, monkeypatch):
    """`--runtime openvino` runs an SDXL model's UNet (txt2img and an image mode): every step is
    the export's, the pictures are torch's (but for its rounding), and the metadata says which
    runtime ran."""
    _openvino()
    from reverie.models.openvino_runtime import OpenVINOUNet

    calls = []
    original = OpenVINOUNet.__call__
    monkeypatch.setattr(OpenVINOUNet, "__call__", lambda self, *args, **kw: calls.append(kw) or original(self, *args, **kw))
    fields = dict(FAST, model="tiny-sdxl-file", prompt="a lighthouse", seed=7, dtype="fp32")
    image = dict(fields, mode="img2img", init_image=photo, strength=1.0)  # resized to 64 px: whole latent levels
    for asked in (fields, image):
        on_torch = studio.generate(make_request(runtime="torch", **asked)).images[0]
        assert not calls
        made = studio.generate(make_request(runtime="openvino", **asked)).images[0]
        assert len(calls) == FAST["steps"] and all(call["added_cond_kwargs"] for call in calls)
        calls.clear()
        assert psnr(made.image, on_torch.image) > 40, asked.get("mode", "txt2img")
        assert made.metadata["settings"]["runtime"] == "openvino"
        assert on_torch.metadata["settings"]["runtime"] == "torch"


def test_an_sdxl_files_unet_is_not_read_when_its_export_is_made(sdxl_models, monkeypatch):
    """Loading (issue 22): in a fresh process, an SDXL single file whose UNet's export is in the
    cache is loaded without reading the UNet's tensors (SDXL's are 5 GB in bf16), and makes the
    picture the first process made."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.methods.diffusion.run import unet_parked
    from reverie.models import single_file
    from reverie.models.checkpoint_header import UNET_PREFIX
    from reverie.studio import Studio

    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # the tiny UNet stands for SDXL's
    request = make_request(runtime="openvino", model="tiny-sdxl-file", prompt="a lighthouse", seed=7, dtype="bf16",
                           **FAST)  # bf16: the file is read tensor by tensor, the UNet's left unread where asked
    first = Studio(device="cpu").generate(request).images[0]  # exports the UNet

    read, real = [], single_file.read_state_dict

    def reading(*args):
        state = real(*args)
        read.extend(key for key, tensor in state.items() if not tensor.is_meta)
        return state

    monkeypatch.setattr(single_file, "read_state_dict", reading)
    studio = Studio(device="cpu")  # a fresh model cache, as in a new process
    again = studio.generate(request).images[0]
    assert read and not [key for key in read if key.startswith(UNET_PREFIX)]
    components = studio.models.find(lambda key: key[:2] == ("diffusion", "tiny-sdxl-file"))
    assert unet_parked(components.unet)
    assert np.array_equal(pixels(again.image), pixels(first.image))

    on_torch = studio.generate(request.model_copy(update={"runtime": "torch"})).images[0]  # reads it then
    assert [key for key in read if key.startswith(UNET_PREFIX)] and not unet_parked(components.unet)
    assert psnr(on_torch.image, first.image) > 30


def test_the_refiners_unet_runs_on_openvino_too(sdxl_models, studio, monkeypatch):
    """With a refiner, both stages' UNets run on OpenVINO: the base's steps up to the switch
    (six size/crop time ids), then the refiner's export (five: size, crop, aesthetic score); the
    picture is torch's but for the runtimes' rounding."""
    _openvino()
    from reverie.models.openvino_runtime import OpenVINOUNet

    calls = []
    original = OpenVINOUNet.__call__
    monkeypatch.setattr(OpenVINOUNet, "__call__", lambda self, *args, **kw: calls.append(kw) or original(self, *args, **kw))
    fields = dict(FAST, steps=4, model="tiny-sdxl", refiner="tiny-sdxl-refiner", refiner_switch=0.5, prompt="a boat",
                  seed=11, dtype="fp32")
    on_torch = studio.generate(make_request(runtime="torch", **fields)).images[0]
    assert not calls
    made = studio.generate(make_request(runtime="openvino", **fields)).images[0]
    assert [call["added_cond_kwargs"]["time_ids"].shape[1] for call in calls] == [6, 6, 5, 5]
    assert psnr(made.image, on_torch.image) > 40
    assert "Refiner: tiny-sdxl-refiner" in made.parameters


def test_step_caching_splits_the_base_and_refiner_exports_as_torch_caches_them(sdxl_models, studio, monkeypatch):
    """`step_cache` with `--runtime openvino`: each stage's export split where its deep features
    are kept (models/openvino_step_cache.py; SDXL's last up block has no attention), its own
    cache per stage as on torch, and the picture torch's step-cached one but for the runtimes'
    rounding."""
    _openvino()
    from reverie.models.openvino_runtime import OpenVINOUNet

    parts = []
    original = OpenVINOUNet.run_part
    monkeypatch.setattr(OpenVINOUNet, "run_part",
                        lambda self, part, *args, **kw: parts.append(part) or original(self, part, *args, **kw))
    fields = dict(FAST, steps=4, model="tiny-sdxl", refiner="tiny-sdxl-refiner", refiner_switch=0.5, prompt="a boat",
                  seed=11, dtype="fp32", step_cache=2)
    on_torch = studio.generate(make_request(runtime="torch", **fields)).images[0]
    made = studio.generate(make_request(runtime="openvino", **fields)).images[0]
    assert parts == ["unet-whole", "unet-shallow"] * 2  # the base's two steps, then the refiner's
    plain = studio.generate(make_request(runtime="openvino", **(fields | {"step_cache": None}))).images[0]
    assert psnr(made.image, on_torch.image) > 40
    assert psnr(made.image, plain.image) < float("inf")  # the skipped evaluations changed it
    assert made.metadata["settings"]["step_cache"] == 2 and made.metadata["settings"]["runtime"] == "openvino"
