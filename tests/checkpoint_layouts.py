"""Random-weight checkpoints with the exact key layout of public files, built in code.

Each builder follows the original project's module tree (not reverie's converters), so a test
that loads these files strictly checks the converters against the real layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The ImageNet f16 models of taming-transformers (vqgan_imagenet_f16_1024 / _16384).
IMAGENET_F16 = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
# The same levels, blocks and attention (so the same key names) at a quarter of the width; 32 is
# the narrowest the converter's 32-group norms allow.
IMAGENET_F16_NARROW = dict(IMAGENET_F16, ch=32)


def _resnet(prefix: str, cin: int, cout: int, out: dict) -> None:
    out[f"{prefix}.norm1.weight"] = (cin,)
    out[f"{prefix}.norm1.bias"] = (cin,)
    out[f"{prefix}.conv1.weight"] = (cout, cin, 3, 3)
    out[f"{prefix}.conv1.bias"] = (cout,)
    out[f"{prefix}.norm2.weight"] = (cout,)
    out[f"{prefix}.norm2.bias"] = (cout,)
    out[f"{prefix}.conv2.weight"] = (cout, cout, 3, 3)
    out[f"{prefix}.conv2.bias"] = (cout,)
    if cin != cout:
        out[f"{prefix}.nin_shortcut.weight"] = (cout, cin, 1, 1)
        out[f"{prefix}.nin_shortcut.bias"] = (cout,)


def _attention(prefix: str, c: int, out: dict) -> None:
    out[f"{prefix}.norm.weight"] = (c,)
    out[f"{prefix}.norm.bias"] = (c,)
    for name in ("q", "k", "v", "proj_out"):
        out[f"{prefix}.{name}.weight"] = (c, c, 1, 1)
        out[f"{prefix}.{name}.bias"] = (c,)


def taming_vqgan_shapes(dd: dict, n_embed: int, embed_dim: int) -> dict[str, tuple]:
    """Key -> shape of taming's VQModel (encoder, decoder, quantizer, quant convs)."""
    out: dict[str, tuple] = {}
    ch, mult, nres, levels = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], len(dd["ch_mult"])
    in_mult = (1,) + tuple(mult)
    out["encoder.conv_in.weight"], out["encoder.conv_in.bias"] = (ch, dd["in_channels"], 3, 3), (ch,)
    res = dd["resolution"]
    for i in range(levels):
        cin, cout = ch * in_mult[i], ch * mult[i]
        for j in range(nres):
            _resnet(f"encoder.down.{i}.block.{j}", cin, cout, out)
            cin = cout
            if res in dd["attn_resolutions"]:
                _attention(f"encoder.down.{i}.attn.{j}", cout, out)
        if i != levels - 1:
            out[f"encoder.down.{i}.downsample.conv.weight"] = (cout, cout, 3, 3)
            out[f"encoder.down.{i}.downsample.conv.bias"] = (cout,)
            res //= 2
    top = ch * mult[-1]
    for side in ("encoder", "decoder"):
        _resnet(f"{side}.mid.block_1", top, top, out)
        _attention(f"{side}.mid.attn_1", top, out)
        _resnet(f"{side}.mid.block_2", top, top, out)
    out["encoder.norm_out.weight"], out["encoder.norm_out.bias"] = (top,), (top,)
    out["encoder.conv_out.weight"], out["encoder.conv_out.bias"] = (dd["z_channels"], top, 3, 3), (dd["z_channels"],)
    out["decoder.conv_in.weight"], out["decoder.conv_in.bias"] = (top, dd["z_channels"], 3, 3), (top,)
    cin = top
    for i in reversed(range(levels)):
        cout = ch * mult[i]
        for j in range(nres + 1):
            _resnet(f"decoder.up.{i}.block.{j}", cin, cout, out)
            cin = cout
            if res in dd["attn_resolutions"]:
                _attention(f"decoder.up.{i}.attn.{j}", cout, out)
        if i != 0:
            out[f"decoder.up.{i}.upsample.conv.weight"] = (cout, cout, 3, 3)
            out[f"decoder.up.{i}.upsample.conv.bias"] = (cout,)
            res *= 2
    out["decoder.norm_out.weight"], out["decoder.norm_out.bias"] = (ch * mult[0],), (ch * mult[0],)
    out["decoder.conv_out.weight"], out["decoder.conv_out.bias"] = (dd["out_ch"], ch * mult[0], 3, 3), (dd["out_ch"],)
    out["quant_conv.weight"], out["quant_conv.bias"] = (embed_dim, dd["z_channels"], 1, 1), (embed_dim,)
    out["post_quant_conv.weight"], out["post_quant_conv.bias"] = (dd["z_channels"], embed_dim, 1, 1), (dd["z_channels"],)
    out["quantize.embedding.weight"] = (n_embed, embed_dim)
    return out


def write_taming_vqgan(folder: Path, dd: dict, n_embed: int, embed_dim: int, seed: int = 0,
                       name: str = "last", perceptual_loss: bool = True) -> Path:
    """A Lightning-style .ckpt (with a discriminator beside the model, as trained) and its YAML.
    perceptual_loss=False names taming's DummyLoss in the YAML: taming itself builds the LPIPS loss
    when it loads a model, which downloads VGG weights (VQGAN+CLIP scripts delete it right after)."""
    import yaml

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in taming_vqgan_shapes(dd, n_embed, embed_dim).items():
        scale = 1.0 if key.endswith("norm1.weight") or key.endswith("norm2.weight") or ".norm" in key else 0.05
        state[key] = torch.randn(shape, generator=generator) * scale
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4, generator=generator)
    state["loss.logvar"] = torch.zeros(())
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"{name}.ckpt"
    torch.save({"epoch": 4, "global_step": 1000, "pytorch-lightning_version": "1.0.8", "state_dict": state}, checkpoint)
    config = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                        "params": {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": dd,
                                   "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                                  "params": {"disc_conditional": False, "disc_in_channels": 3}}}}}
    if not perceptual_loss:
        config["model"]["params"]["lossconfig"] = {"target": "taming.modules.losses.vqperceptual.DummyLoss"}
    checkpoint.with_suffix(".yaml").write_text(yaml.safe_dump(config))
    return checkpoint


# The `layers` of the published biggan-deep-128 and -256 configs: (upsample, in, out) multipliers.
BIGGAN_LAYERS = {
    128: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
          (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    256: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
          (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
}


def biggan(output_dim: int = 128, channel_width: int = 128):
    """pytorch-pretrained-biggan's BigGAN-deep (the published models have channel_width 128)."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config = BigGANConfig(output_dim=output_dim, channel_width=channel_width)
    config.layers = BIGGAN_LAYERS[output_dim]
    return BigGAN(config)


def write_biggan(folder: Path, output_dim: int = 128, channel_width: int = 128, seed: int = 0) -> Path:
    """A pytorch-pretrained-biggan folder: config.json + pytorch_model.bin (a saved state dict)."""
    torch.manual_seed(seed)
    model = biggan(output_dim, channel_width)
    config = model.config
    # The package leaves the last batch norm's weight and bias uninitialized (torch.Tensor(n)), and
    # fresh spectral-norm vectors blow up through the layers: set the one as a fresh BatchNorm2d
    # does and settle the others as training leaves them, so the pictures are finite and the same
    # in every run (a dream refuses NaN pictures).
    for module in model.modules():
        if getattr(module, "conditional", True) is False:
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
    with torch.no_grad():
        model.train()
        for _ in range(10):
            model(torch.zeros(1, config.z_dim), torch.zeros(1, config.num_classes), 1.0)
        model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.__dict__, indent=2))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


# OpenAI's layout fixes 64-wide attention heads; open_clip infers the head count from that.
SMALL_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=32, layers=2, width=128, patch_size=8, head_width=64),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2))


# OpenAI's released CLIPs as OpenAI's own code builds them from a state dict: the vision tower's
# blocks per stage (ResNet) or layers (ViT), width, patch size and picture size; the text side's
# width and layers; the embedding size. All read 77 tokens from a vocabulary of 49,408.
OPENAI_CLIPS = {
    "RN50": ((3, 4, 6, 3), 64, None, 224, 512, 12, 1024),
    "RN101": ((3, 4, 23, 3), 64, None, 224, 512, 12, 512),
    "RN50x4": ((4, 6, 10, 6), 80, None, 288, 640, 12, 640),
    "RN50x16": ((6, 8, 18, 8), 96, None, 384, 768, 12, 768),
    "RN50x64": ((3, 15, 36, 10), 128, None, 448, 1024, 12, 1024),
    "ViT-B-32": (12, 768, 32, 224, 512, 12, 512),
    "ViT-B-16": (12, 768, 16, 224, 512, 12, 512),
    "ViT-L-14": (24, 1024, 14, 224, 768, 12, 768),
    "ViT-L-14-336": (24, 1024, 14, 336, 768, 12, 768),
}


def openai_clip_config(name: str) -> dict:
    """CLIP arguments for one of OPENAI_CLIPS (heads of 64 channels, as OpenAI's are)."""
    layers, width, patch, size, text_width, text_layers, embed_dim = OPENAI_CLIPS[name]
    return dict(embed_dim=embed_dim, vision_cfg=dict(layers=layers, width=width, patch_size=patch, image_size=size),
                text_cfg=dict(context_length=77, vocab_size=49408, width=text_width, heads=text_width // 64,
                              layers=text_layers))


# ViT-B/32's key layout (12 layers on each side, 32 px patches, 224 px pictures) at a twelfth of its widths.
VIT_B_32_NARROW = dict(embed_dim=64, vision_cfg=dict(image_size=224, layers=12, width=64, patch_size=32),
                       text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=12))


def openai_clip_model(config: dict | None = None, seed: int = 0, device: str = "cpu"):
    """open_clip's CLIP in OpenAI's layout (QuickGELU): SMALL_CLIP, or e.g. openai_clip_config("ViT-B-32").
    On the meta device it costs nothing and has only shapes: enough to check key names and shapes."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    with torch.device(device):
        return CLIP(**(config or SMALL_CLIP), quick_gelu=True).eval()


def write_openai_clip(path: Path, model, half: bool = True) -> Path:
    """A TorchScript archive of the model in fp16, as OpenAI's released .pt files are."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    # OpenAI's CLIP keeps its text attention mask as a plain attribute, so its archives (and OpenAI's
    # strict loader) have no `attn_mask` key; open_clip's is a non-persistent buffer, which tracing
    # would save: leave it out while tracing.
    mask = model._buffers.pop("attn_mask", None)
    try:
        traced = torch.jit.trace_module(model, {"encode_image": torch.zeros(1, 3, size, size)}, check_trace=False)
    finally:
        if mask is not None:
            model._buffers["attn_mask"] = mask
    if half:
        traced = traced.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    return path
