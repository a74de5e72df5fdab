"""Training the built-in text-conditioned denoiser on autoencoder latents.

The UNet predicts v (velocity) under SD's scaled-linear noise schedule, rescaled so that its
last step is (nearly) pure noise (zero terminal SNR, Lin et al. 2023, "Common Diffusion Noise
Schedules and Sample Steps are Flawed"). With SD's own schedule the last training step still holds 7% of
the picture; on a 16x16 latent the model learned to read the picture's overall colour from that
leak and so ignored colour words, and at sampling time, starting from true noise, it took its
colours from the seed. The rescaled betas ship in the scheduler config (`trained_betas`), so
every diffusers sampler uses the same schedule.

The loss is v-prediction MSE, capped at the low-noise end (min-SNR-style: the x0 weight is
min(SNR + 1, gamma)). Steps at high noise, where a picture's layout and colours are decided from
the text, keep their full weight. One caption in ten is dropped to the empty prompt so
classifier-free guidance works at sampling time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

from .loop import TrainConfig, Trainer, draw_batch

TRAIN_STEPS = 1000
# Pure noise would be sqrt(alpha_bar) = 0, an infinite sigma. 1/64 (sigma 64, SNR 2.4e-4, a
# leak 4x smaller than SD's 0.068, well under the 1/16 noise of a 16x16 latent's mean)
# keeps Karras-spaced samplers sane: with diffusers' own 2**-12 (sigma 4096) their steps
# crowd at t=999 and DPM++ 2M Karras overruns its sigma table.
TERMINAL_SIGNAL = 1.0 / 64


def zero_terminal_snr_betas(steps: int = TRAIN_STEPS, beta_start: float = 0.00085, beta_end: float = 0.012,
                            terminal_signal: float = TERMINAL_SIGNAL) -> list[float]:
    """SD's scaled-linear betas with sqrt(alpha_bar) moved linearly so the last step holds (almost) no signal.

    The first step keeps its value; sqrt(alpha_bar) is shifted and stretched so that it ends at
    `terminal_signal` instead of SD's 0.068.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    signal = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = signal[0].clone(), signal[-1].clone()
    signal = terminal_signal + (signal - last) * (first - terminal_signal) / (first - last)
    alpha_bar = signal**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return [round(float(b), 12) for b in 1.0 - alphas]


SCHEDULE = {
    "num_train_timesteps": TRAIN_STEPS,
    "beta_start": 0.00085,  # what the betas were made from; trained_betas below is what is used
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": zero_terminal_snr_betas(),
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "steps_offset": 1,  # unused with trailing spacing; 1 keeps older schedulers from warning
    "clip_sample": False,
}
CAPTION_DROPOUT = 0.1
SNR_GAMMA = 5.0


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
        device = self.text_encoder.device
        for start in range(0, len(missing), 256):
            texts = missing[start : start + 256]
            batch = self.tokenizer(texts, padding="max_length", max_length=self.window, truncation=True, return_tensors="pt")
            states = self.text_encoder(input_ids=batch["input_ids"].to(device),
                                       attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            for text, state in zip(texts, states):
                self.cache[text] = state.to(torch.float16)
        return torch.stack([self.cache[c] for c in captions]).float()


def denoiser_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, states: torch.Tensor, rng: torch.Generator,
                  timesteps: torch.Tensor | None = None) -> dict:
    """Weighted v-MSE at random timesteps (or the `timesteps` given, one per latent).

    Noise and timesteps are drawn on the CPU from `rng`, then moved to the latents' device.
    """
    noise = torch.randn(latents.shape, generator=rng).to(latents.device)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=rng)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample.float()
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr + 1, max=SNR_GAMMA) / (snr + 1)  # plain v-MSE, capped where SNR > gamma - 1
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
    init: str | Path | None = None,
    weights: torch.Tensor | None = None,
) -> UNet2DConditionModel:
    """Train on scaled latents [N,4,h,w], each with its list of caption lines.

    `init`, a diffusers UNet folder, starts from those weights instead of random ones (a
    fine-tune); a run folder with a checkpoint resumes from the checkpoint either way.
    `weights` (one per latent) draws some latents more often than others; by default all alike.
    Training runs on `config.device`; the model comes back on the CPU.
    """
    torch.manual_seed(config.seed)
    if init is not None:
        unet = UNet2DConditionModel.from_pretrained(init, local_files_only=True, dtype=torch.float32)
    else:
        unet = build_unet(latents.shape[-1], caption_states.text_encoder.config.hidden_size)
    scheduler = DDPMScheduler.from_config(SCHEDULE)
    trainer = Trainer(unet, out, config, "unet")

    def step(step_index: int, rng: torch.Generator) -> dict:
        index = draw_batch(len(latents), config.batch_size, rng, weights)
        picks = torch.randint(0, 1 << 30, (config.batch_size,), generator=rng).tolist()
        drop = (torch.rand(config.batch_size, generator=rng) < CAPTION_DROPOUT).tolist()
        texts = ["" if d else captions[i][p % len(captions[i])] for i, p, d in zip(index.tolist(), picks, drop)]
        device = trainer.device
        return denoiser_loss(unet, scheduler, latents[index].to(device), caption_states(texts).to(device), rng)

    def sample(step_index: int, folder: Path) -> None:
        if sample_fn:
            folder.mkdir(parents=True, exist_ok=True)
            sample_fn(unet, step_index, folder)

    trainer.run(step, sample, quiet=quiet)
    unet.load_state_dict(trainer.ema_model_state())
    return unet.cpu().eval()
