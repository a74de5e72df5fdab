"""Single-file Stable Diffusion checkpoints: export to the CompVis layout, safe offline loading.

Every model here is a tiny random-weight model of the real SD architecture (two UNet
levels, two VAE levels, a 32-wide CLIP text encoder), exported with reverie's own
exporter so the files have the key layout of public checkpoints.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reverie.errors import BadCheckpoint, BadRequest, ModelNotFound
from reverie.models.clip_tokenizer import NUM_MERGES, VOCAB_SIZE, clip_tokenizer, ensure_tokenizer_files
from reverie.models.components import ModelComponents
from reverie.models.checkpoint_header import CONFIGS_DIR, OPEN_CLIP_PREFIX, UNET_PREFIX
from reverie.models.ldm_layout import (
    open_clip_to_ldm,
    save_single_file,
    to_ldm_state_dict,
)
from reverie.models.single_file import (
    CheckpointLayout,
    load_single_file,
    resolve_prediction_type,
    shipped_config_dir,
)

TEXT_WIDTH = 32
TEXT_LAYERS = 3
ASTRONAUT_IDS = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


# ----------------------------------------------------------------------------- tiny models


def tiny_models(family: str, in_channels: int = 4, seed: int = 0):
    """A UNet, VAE and CLIP text encoder with SD's structure at toy width."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd2 = family == "sd2"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,  # SD's; diffusers' LDM converter derives block numbers from it
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,  # SD 2.x uses linear proj_in/out, SD 1.x 1x1 convs
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TEXT_WIDTH,
            intermediate_size=64,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=4,
            vocab_size=VOCAB_SIZE,  # the real tokenizer's ids must fit
            hidden_act="gelu" if sd2 else "quick_gelu",
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    # Default init leaves norms at 1 and biases at 0; random values make any swapped or
    # dropped tensor visible in the comparisons.
    with torch.no_grad():
        for model in (unet, vae, text_encoder):
            for p in model.parameters():
                p.normal_(0.0, 0.05)
    return unet, vae, text_encoder


def write_config_dir(folder, unet, vae, text_encoder, prediction_type="epsilon"):
    """The diffusers config folder for the tiny models, as load_single_file(config_dir=) takes it."""
    from diffusers import DDIMScheduler

    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    text_encoder.config.save_pretrained(folder / "text_encoder")
    DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    ).save_config(folder / "scheduler")
    return folder


def export_tiny(tmp_path, family, *, in_channels=4, prediction_type="epsilon", name=None, half=False):
    """Export tiny models as a single file; returns (path, config_dir, (unet, vae, text_encoder))."""
    models = tiny_models(family, in_channels)
    config_dir = write_config_dir(tmp_path / f"config-{family}", *models, prediction_type=prediction_type)
    components = ModelComponents(
        name="tiny",
        unet=models[0],
        vae=models[1],
        text_encoder=models[2],
        tokenizer=None,
        scheduler_config={"prediction_type": prediction_type},
        family=family,
    )
    path = save_single_file(components, tmp_path / (name or f"tiny-{family}.safetensors"), half=half)
    return path, config_dir, models


def assert_same_weights(expected, actual, dtype=None):
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for key, value in expected_state.items():
        value = value.to(dtype) if dtype is not None else value
        assert torch.equal(value, actual_state[key]), key


def assert_roundtrip(components, models):
    for original, loaded in zip(models, (components.unet, components.vae, components.text_encoder), strict=True):
        assert_same_weights(original, loaded)


def generate_two_steps(components):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        "a photograph of an astronaut riding a horse",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    return result.images


# ----------------------------------------------------------------------------- tokenizer


def test_clip_tokenizer_gives_the_published_ids():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.model_max_length == 77
    assert tokenizer("a photograph of an astronaut riding a horse").input_ids == ASTRONAUT_IDS
    assert tokenizer.pad_token_id == 49407

    padded = clip_tokenizer(pad_token="!")("a horse", padding="max_length", max_length=77).input_ids
    assert padded[:4] == [49406, 320, 4558, 49407] and padded[4:] == [0] * 73

    folder = ensure_tokenizer_files()
    assert len(json.loads((folder / "vocab.json").read_text(encoding="utf-8"))) == VOCAB_SIZE
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) - 1 == NUM_MERGES


# ----------------------------------------------------------------------------- round trips


def test_sd1_roundtrip_gives_identical_weights_and_generates(tmp_path):
    path, config_dir, models = export_tiny(tmp_path, "sd1")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.output_blocks.5.1.proj_out.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    q = load_file(str(path))["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert q.shape == (64, 64, 1, 1)  # LDM's attention is 1x1 convolutions

    components = load_single_file(path, config_dir=config_dir)

    assert (components.name, components.family, components.source) == ("tiny-sd1", "sd1", str(path))
    assert components.scheduler_config["prediction_type"] == "epsilon"
    assert components.tokenizer.pad_token == "<|endoftext|>"
    assert not components.is_inpainting_model
    assert_roundtrip(components, models)
    image = generate_two_steps(components)
    assert image.shape == (1, 16, 16, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


def test_sd2_roundtrip_uses_open_clip_layout_and_generates(tmp_path):
    path, config_dir, models = export_tiny(tmp_path, "sd2", prediction_type="v_prediction")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    for key in (
        "transformer.resblocks.0.attn.in_proj_weight",
        "ln_final.weight",
        "positional_embedding",
        "token_embedding.weight",
        "text_projection",
        f"transformer.resblocks.{TEXT_LAYERS}.mlp.c_proj.bias",
    ):
        assert OPEN_CLIP_PREFIX + key in keys, key
    assert "v_pred" in keys

    components = load_single_file(path, config_dir=config_dir)

    assert components.family == "sd2"
    assert components.scheduler_config["prediction_type"] == "v_prediction"
    assert components.tokenizer.pad_token_id == 0  # SD 2.x pads with "!"
    assert_roundtrip(components, models)
    image = generate_two_steps(components)
    assert image.shape == (1, 16, 16, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


def test_sd2_text_encoder_export_is_what_open_clip_reads():
    """OpenCLIP itself loads the exported keys strictly and computes the same states."""
    from open_clip.transformer import TextTransformer

    text_encoder = tiny_models("sd2")[2].eval()
    exported = {k[len(OPEN_CLIP_PREFIX) :]: v for k, v in open_clip_to_ldm(text_encoder).items()}
    exported.pop("logit_scale")  # lives on the CLIP model, not its text tower
    tower = TextTransformer(width=TEXT_WIDTH, heads=4, layers=TEXT_LAYERS + 1, mlp_ratio=2.0, output_dim=TEXT_WIDTH)
    tower.load_state_dict(exported, strict=True)
    tower.eval()

    ids = torch.randint(0, VOCAB_SIZE, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
        x = tower.token_embedding(ids) + tower.positional_embedding
        for block in tower.transformer.resblocks[:-1]:  # SD 2.x: penultimate layer
            x = block(x, attn_mask=tower.attn_mask)
        penultimate = tower.ln_final(x)
        last = tower.ln_final(tower.transformer.resblocks[-1](x, attn_mask=tower.attn_mask))
    torch.testing.assert_close(penultimate, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, penultimate)  # the padding 24th block is an identity


def test_nine_channel_unet_is_detected_as_inpainting(tmp_path):
    path, config_dir, models = export_tiny(tmp_path, "sd1", in_channels=9)
    # The config folder is the 4-channel one: the weights decide the input channels.
    write_config_dir(config_dir, *tiny_models("sd1"))

    components = load_single_file(path, config_dir=config_dir)

    assert components.is_inpainting_model and components.unet.config.in_channels == 9
    assert_roundtrip(components, models)


def test_plain_ckpt_loads_only_through_weights_only(tmp_path, monkeypatch):
    path, config_dir, models = export_tiny(tmp_path, "sd1")
    ckpt = tmp_path / "tiny.ckpt"
    # A1111/Lightning layout: weights nested under "state_dict" beside training state,
    # here a numpy scalar, which weights_only alone would refuse.
    training_state = {"global_step": numpy.int64(470000), "epoch": 6}
    torch.save({"state_dict": load_file(str(path)), **training_state}, ckpt)

    real_load = torch.load
    calls = []

    def guarded_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "a checkpoint was unpickled without weights_only"
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded_load)
    components = load_single_file(ckpt, config_dir=config_dir)

    assert len(calls) == 1
    assert components.name == "tiny"
    assert_roundtrip(components, models)


class _RunsCode:
    """Pickles as a call to os.system, as a booby-trapped checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callbacks": _RunsCode(marker)}
    ckpt = tmp_path / "evil.ckpt"
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=4))

    with pytest.raises(BadCheckpoint, match="refuses to run code from a checkpoint; convert it to .safetensors"):
        load_single_file(ckpt)
    assert not marker.exists()


def test_reading_into_16_bits_gives_safetensors_own_tensors_cast_and_the_same_model(tmp_path):
    """The tensor-by-tensor reader (no memory map) against safetensors' own loader: every tensor
    the same, narrowed to bf16 (integers and the empty marker as they are, nothing widened),
    and the model loaded in bf16 the same to the last bit as before."""
    from reverie.models.single_file import read_state_dict

    path, config_dir, _ = export_tiny(tmp_path, "sd1")
    state = load_file(str(path)) | {"v_pred": torch.tensor([]), "counts": torch.arange(5)}
    half = {key: value.half() if key.endswith("proj_out.weight") else value for key, value in state.items()}
    save_file(half, str(tmp_path / "mixed.safetensors"), metadata={"format": "pt"})
    streamed = read_state_dict(tmp_path / "mixed.safetensors", torch.bfloat16)
    assert streamed.keys() == half.keys()
    for key, value in half.items():
        expected = value.to(torch.bfloat16) if value.is_floating_point() else value
        assert streamed[key].dtype == expected.dtype and torch.equal(streamed[key], expected), key
    widened = read_state_dict(tmp_path / "mixed.safetensors", torch.float32)
    assert all(widened[key].dtype == value.dtype for key, value in half.items())  # never widened at read

    loaded = load_single_file(path, config_dir=config_dir, dtype=torch.bfloat16)
    for name, tensor in loaded.unet.state_dict().items():
        assert tensor.dtype == torch.bfloat16, name
    reference = load_single_file(path, config_dir=config_dir)  # fp32, read by safetensors' own loader
    for module, expected in ((loaded.unet, reference.unet), (loaded.vae, reference.vae),
                             (loaded.text_encoder, reference.text_encoder)):
        mine = module.state_dict()
        for name, tensor in expected.state_dict().items():
            want = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            assert torch.equal(mine[name], want), name


def test_a_unet_its_export_serves_for_is_left_unread_and_read_when_declined(tmp_path, monkeypatch):
    """`leave_unet` (issue 22: a UNet whose OpenVINO export is made serves without its weights):
    asked with the UNet built from its config, the one whose export fingerprint the loaded
    UNet has; answering True leaves the UNet's tensors unread (the text encoder and VAE the
    same as ever), answering False gives the same model as a plain load, each tensor read once."""
    from reverie.models import safetensors_stream
    from reverie.models.openvino_runtime import weights_fingerprint

    path, config_dir, _ = export_tiny(tmp_path, "sd1")
    plain = load_single_file(path, config_dir=config_dir, dtype=torch.bfloat16)
    read, real = [], safetensors_stream.read_narrowed

    def counting(file, dtype, wanted=None):
        state = real(file, dtype, wanted)
        read.extend(key for key, tensor in state.items() if not tensor.is_meta)
        return state

    monkeypatch.setattr(safetensors_stream, "read_narrowed", counting)
    monkeypatch.setattr("reverie.models.single_file.read_narrowed", counting)
    asked = []
    left = load_single_file(path, config_dir=config_dir, dtype=torch.bfloat16,
                            leave_unet=lambda unet, source: asked.append(weights_fingerprint(unet, source)) or True)
    assert asked == [weights_fingerprint(plain.unet, str(path))]
    assert all(parameter.is_meta for parameter in left.unet.parameters()) and left.unet.dtype == torch.bfloat16
    assert read and not any(key.startswith(UNET_PREFIX) for key in read)
    assert_same_weights(plain.vae, left.vae)
    assert_same_weights(plain.text_encoder, left.text_encoder)

    read.clear()
    declined = load_single_file(path, config_dir=config_dir, dtype=torch.bfloat16, leave_unet=lambda unet, source: False)
    assert sorted(read) == sorted(load_file(str(path)).keys())  # every tensor, each once
    for module in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(plain, module), getattr(declined, module))


def test_a_safetensors_header_that_lies_is_a_bad_checkpoint_in_16_bits(tmp_path):
    path, _, _ = export_tiny(tmp_path, "sd1")
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    name = next(key for key in header if key != "__metadata__")
    header[name]["data_offsets"][1] += 4  # one more element than its shape holds
    text = json.dumps(header).encode()
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + header_len:]))
    with pytest.raises(BadCheckpoint, match="lying.safetensors is damaged.*does not fit"):
        load_single_file(lying, dtype=torch.bfloat16)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BadCheckpoint, match="damaged"):
        load_single_file(truncated, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_a_bad_checkpoint(tmp_path, suffix):
    path, _, _ = export_tiny(tmp_path, "sd1")
    broken = tmp_path / f"broken{suffix}"
    if suffix == ".ckpt":
        torch.save(load_file(str(path)), broken)
        data = broken.read_bytes()
    else:
        data = path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])

    with pytest.raises(BadCheckpoint, match="damaged"):
        load_single_file(broken)


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({"weight": torch.randn(4, 4), "bias": torch.randn(4)}, "no known Stable Diffusion layout"),
        (
            {
                "conditioner.embedders.1.model.positional_embedding": torch.randn(77, 8),
                "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
            },
            "SDXL",
        ),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 8)}, "LoRA"),
    ],
    ids=["random", "sdxl", "lora"],
)
def test_non_sd_safetensors_is_a_bad_checkpoint(tmp_path, tensors, expected):
    path = tmp_path / "other.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(BadCheckpoint, match=expected):
        load_single_file(path)


def test_missing_path_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        load_single_file(tmp_path / "nowhere.safetensors")
    with pytest.raises(ModelNotFound):
        load_single_file(tmp_path)  # a folder is not a single file


@pytest.mark.parametrize(
    ("dropped", "expected"),
    [
        (
            "model.diffusion_model.middle_block.1.proj_in.weight",
            "lacks UNet weights: mid_block.attentions.0.proj_in.weight",
        ),
        (
            "first_stage_model.decoder.up.0.block.1.conv2.bias",
            "lacks VAE weights: decoder.up_blocks.1.resnets.1.conv2.bias",
        ),
        (
            "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight",
            "lacks text encoder weights: encoder.layers.1.mlp.fc2.weight",
        ),
    ],
    ids=["unet", "vae", "text_encoder"],
)
def test_checkpoint_missing_weights_is_a_bad_checkpoint(tmp_path, dropped, expected):
    path, config_dir, _ = export_tiny(tmp_path, "sd1")
    state = load_file(str(path))
    del state[dropped]
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    with pytest.raises(BadCheckpoint, match=expected):
        load_single_file(partial, config_dir=config_dir)


def test_weights_that_do_not_fit_the_shipped_config_are_a_bad_checkpoint(tmp_path):
    path, _, _ = export_tiny(tmp_path, "sd1")
    with pytest.raises(BadCheckpoint, match=r"do not fit the config in .*sd1: UNet weight .* is \(.*\) in the file"):
        load_single_file(path)


def test_half_precision_export(tmp_path):
    path, config_dir, models = export_tiny(tmp_path, "sd1", half=True)
    assert {t.dtype for t in load_file(str(path)).values() if t.is_floating_point()} == {torch.float16}

    components = load_single_file(path, config_dir=config_dir, dtype=torch.float16)
    for original, loaded in zip(models, (components.unet, components.vae, components.text_encoder), strict=True):
        assert_same_weights(original, loaded, dtype=torch.float16)


def test_export_only_writes_safetensors(tmp_path):
    unet, vae, text_encoder = tiny_models("sd1")
    components = ModelComponents("x", unet, vae, text_encoder, None, {}, family="sd1")
    with pytest.raises(BadRequest):
        save_single_file(components, tmp_path / "model.ckpt")
    assert set(to_ldm_state_dict(unet, vae, text_encoder, "sd1")) == set(
        load_file(str(save_single_file(components, tmp_path / "model.safetensors")))
    )


# ----------------------------------------------------------------------------- configuration


SD1 = CheckpointLayout("sd1", 4, 768, 768)
SD2 = CheckpointLayout("sd2", 4, 1024, 1024)
SD2_INPAINT = CheckpointLayout("sd2", 9, 1024, 1024)


@pytest.mark.parametrize(
    ("layout", "file_name", "requested", "prediction", "folder"),
    [
        (SD1, "v1-5-pruned-emaonly.safetensors", None, "epsilon", "sd1"),
        (CheckpointLayout("sd1", 9, 768, 768), "sd-v1-5-inpainting.ckpt", None, "epsilon", "sd1-inpainting"),
        (SD2, "v2-1_768-ema-pruned.safetensors", None, "v_prediction", "sd2"),
        (SD2, "v2-1_512-ema-pruned.safetensors", None, "epsilon", "sd2-base"),
        (SD2, "some-finetune.safetensors", None, "v_prediction", "sd2"),  # 2.x default: 768 v
        (SD2, "some-finetune.safetensors", "epsilon", "epsilon", "sd2-base"),  # override
        (SD2_INPAINT, "512-inpainting-ema.safetensors", None, "epsilon", "sd2-base"),
    ],
)
def test_prediction_type_and_config_choice(tmp_path, layout, file_name, requested, prediction, folder):
    path = tmp_path / file_name
    chosen = resolve_prediction_type(layout, {}, path, requested)
    assert chosen == prediction
    assert shipped_config_dir(layout, chosen) == CONFIGS_DIR / folder


def test_prediction_type_evidence_from_marker_metadata_and_yaml(tmp_path):
    path = tmp_path / "v2-1_512-looking-name.safetensors"
    assert resolve_prediction_type(SD2, {"v_pred": torch.tensor([])}, path, None) == "v_prediction"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: v\n")
    assert resolve_prediction_type(SD2, {}, path, None) == "v_prediction"
    with pytest.raises(BadRequest):
        resolve_prediction_type(SD2, {}, path, "velocity")

    # An exported 512 epsilon SD 2.x model keeps its parameterization whatever its name.
    exported, _, _ = export_tiny(tmp_path, "sd2", prediction_type="epsilon", name="my-finetune.safetensors")
    with safe_open(str(exported), "pt") as f:
        assert f.metadata()["modelspec.prediction_type"] == "epsilon"
    assert resolve_prediction_type(SD2, {}, exported, None) == "epsilon"


def test_shipped_configs_describe_the_public_architectures():
    """Parameter counts of the published SD 1.5 / 2.x models, built on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    expected = {  # unet, vae, text encoder
        "sd1": (859_520_964, 83_653_863, 123_060_480),
        "sd1-inpainting": (859_535_364, 83_653_863, 123_060_480),
        "sd2": (865_910_724, 83_653_863, 340_387_840),
        "sd2-base": (865_910_724, 83_653_863, 340_387_840),
    }
    for name, counts in expected.items():
        folder = CONFIGS_DIR / name
        with init_empty_weights():
            models = (
                UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            )
        assert tuple(sum(p.numel() for p in m.parameters()) for m in models) == counts, name
