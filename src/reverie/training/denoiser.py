"""Training the built-in text-conditioned denoiser on autoencoder latents.

The UNet predicts v (velocity) under SD's scaled-linear noise schedule, with min-SNR loss
weighting: both make few-step-budget training converge faster and steadier than plain
epsilon loss. One caption in ten is dropped to the empty prompt so classifier-free guidance
works at sampling time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

from .loop import TrainConfig, Trainer

SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "steps_offset": 1,  # unused with trailing spacing; 1 keeps older schedulers from warning
    "clip_sample": False,
}
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0


def build_unet(latent_size: int = 16, cross_attention_dim: int = 384, channels: tuple[int, ...] = (64, 128, 256)) -> UNet2DConditionModel:
    """A small UNet: plain convolutions at full latent size, cross-attention to the text below it."""
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


class CaptionStates:
    """Text-encoder states for captions, computed once each and kept (fp16) in memory."""

    def __init__(self, tokenizer, text_encoder, window: int):
        self.tokenizer, self.text_encoder, self.window = tokenizer, text_encoder, window
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        # The text encoder runs in fp32 as it does at generation time, whatever the UNet's autocast.
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return self._states(captions)

    def _states(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        for start in range(0, len(missing), 256):
            texts = missing[start : start + 256]
            batch = self.tokenizer(texts, padding="max_length", max_length=self.window, truncation=True, return_tensors="pt")
            states = self.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            for text, state in zip(texts, states):
                self.cache[text] = state.to(torch.float16)
        return torch.stack([self.cache[c] for c in captions]).float()


def denoiser_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, states: torch.Tensor, rng: torch.Generator) -> dict:
    noise = torch.randn(latents.shape, generator=rng)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=rng)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample.float()
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)  # min-SNR weighting for v-prediction
    per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return {"loss": (per_sample * weight).mean()}


def train_denoiser(
    latents: torch.Tensor,
    captions: list[list[str]],
    caption_states: CaptionStates,
    out: str | Path,
    config: TrainConfig,
    sample_fn: Callable[[UNet2DConditionModel, int, Path], None] | None = None,
    quiet: bool = False,
) -> UNet2DConditionModel:
    """Train on scaled latents [N,4,h,w], each with its list of caption lines."""
    torch.manual_seed(config.seed)
    unet = build_unet(latents.shape[-1], caption_states.text_encoder.config.hidden_size)
    scheduler = DDPMScheduler.from_config(SCHEDULE)
    trainer = Trainer(unet, out, config, "unet")

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = torch.randint(0, len(latents), (config.batch_size,), generator=rng)
        picks = torch.randint(0, 1 << 30, (config.batch_size,), generator=rng).tolist()
        drop = (torch.rand(config.batch_size, generator=rng) < CAPTION_DROPOUT).tolist()
        texts = ["" if d else captions[i][p % len(captions[i])] for i, p, d in zip(index.tolist(), picks, drop)]
        return denoiser_loss(unet, scheduler, latents[index], caption_states(texts), rng)

    def sample(step_index: int, folder: Path) -> None:
        if sample_fn:
            folder.mkdir(parents=True, exist_ok=True)
            sample_fn(unet, step_index, folder)

    trainer.run(step, sample, quiet=quiet)
    unet.load_state_dict(trainer.ema_model_state())
    return unet.eval()
