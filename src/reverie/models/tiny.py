"""`tiny-random`: a Stable-Diffusion-shaped model with small random weights.

It is NOT a picture model: its pictures are coloured noise. It exists so the whole pipeline
(tokenizer, text encoder, UNet, VAE, every sampler and mode) can run end to end on any machine
in a second, for tests and for `make demo` until a trained built-in model is installed.
The weights come from a fixed seed, so every machine builds the same model. torch, diffusers and
transformers are imported when it is built, not when its name is looked up.
"""

from __future__ import annotations

from .clip_tokenizer import clip_tokenizer
from .components import ModelComponents

TINY_NAME = "tiny-random"

# The SD 1.x noise schedule, as its scheduler_config.json gives it.
SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "timestep_spacing": "leading",
}


def tiny_unet(in_channels: int = 4, cross_attention_dim: int = 32, sample_size: int = 32) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        # Attention at the lower resolution only: at 64 px that is 256 tokens, not 1024.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae() -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def tiny_text_encoder(hidden_size: int = 32) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_tiny(inpainting: bool = False, seed: int = 0) -> ModelComponents:
    """The tiny random model; `inpainting=True` gives the 9-channel inpainting variant."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = tiny_unet(in_channels=9 if inpainting else 4)
        vae = tiny_vae()
        text_encoder = tiny_text_encoder()
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return ModelComponents(
        name=TINY_NAME + ("-inpainting" if inpainting else ""),
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler_config=dict(SD_SCHEDULE),
        source="built in code (random weights, for tests and demos)",
        family="tiny",
    )
