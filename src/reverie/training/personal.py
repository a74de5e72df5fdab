"""What LoRA and embedding runs share: the base model, the concept's latents, the loss, samples.

A run teaches a frozen base model (any `--model` reference: reverie-mini, tiny-random, SD 1.x/2.x
and SDXL base folders and single files) a concept from a few pictures. The pictures are encoded to latents
once, bucket by bucket; each step draws a bucket (by its share of the pictures), a batch from
it, one caption line per picture, noise and timesteps, all from the step's CPU generator, and
scores the base model's own objective (epsilon or v, from its scheduler config).

Text encoders are handled one by one (`text_encoders`: {"text_encoder": ..., "text_encoder_2":
...}). `Captions` turns a batch's captions into the denoiser's conditioning: for SD 1/2 and mini
the encoder's last states over one window; for SDXL what generation feeds its UNet
(prompts/conditioning.py's own encoding: both encoders' penultimate states side by side, bigG's
pooled text) and the size/crop time ids (the bucket's size as original and target size, crop
(0, 0)).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..errors import BadRequest
from ..models.components import ModelComponents
from ..outputs.grid import make_grid
from .data.concept import Concept
from .loop import draw_batch

SAMPLE_SEEDS = 4  # each sample prompt is drawn from seeds 0..3 at every sample step
STUDIO_NAME = "training-base"


def load_base(reference: str) -> ModelComponents:
    """The base model in fp32 on the CPU (the run moves what it needs to its device)."""
    from ..models.registry import load_model

    components = load_model(reference, torch.float32)
    if components.is_sdxl and components.text_encoder is None:
        raise BadRequest("model", f"{reference} is an SDXL refiner: train on the SDXL base model (a refiner's "
                                  f"LoRAs and embeddings are not what A1111 or ComfyUI load)")
    if components.is_inpainting_model:
        raise BadRequest("model", f"{reference} is an inpainting model (9 input channels); train on its plain base model")
    for module in components.modules:
        module.requires_grad_(False)
    return components


def text_encoders(components: ModelComponents) -> dict[str, torch.nn.Module]:
    """The model's text encoders by their diffusers name: one for SD 1/2 and mini, two for SDXL."""
    encoders = {"text_encoder": components.text_encoder}
    if getattr(components, "text_encoder_2", None) is not None:
        encoders["text_encoder_2"] = components.text_encoder_2
    return encoders


def is_clip(encoder) -> bool:
    return "clip" in str(getattr(getattr(encoder, "config", None), "model_type", ""))


def encode_texts(texts: list[str], tokenizer, text_encoder) -> torch.Tensor:
    """Cross-attention states [N, L, D] for `texts`, as generation frames a one-window prompt
    (CLIP unmasked, other encoders masked over the padding), with gradients when they are wanted."""
    window = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    batch = tokenizer(texts, padding="max_length", max_length=window, truncation=True, return_tensors="pt")
    device = text_encoder.device
    kwargs = {} if is_clip(text_encoder) else {"attention_mask": batch["attention_mask"].to(device)}
    return text_encoder(batch["input_ids"].to(device), **kwargs)[0].float()


def sdxl_time_ids(height: int, width: int, count: int, device) -> torch.Tensor:
    """SDXL's size/crop conditioning for `count` pictures of this size, as generation gives it
    (diffusers' order: original size (h, w), crop top-left (0, 0), target size (h, w))."""
    return torch.tensor([[height, width, 0, 0, height, width]] * count, dtype=torch.float32, device=device)


class Captions:
    """Captions -> the denoiser's conditioning keywords (`encoder_hidden_states`, and for SDXL
    `added_cond_kwargs`), encoded as generation encodes a prompt.

    `tokenizers` replaces the model's own ({"text_encoder": ..., "text_encoder_2": ...}: an
    embedding run's copies with the new words). With `trained` (something in the encoders learns)
    every batch is encoded with gradients; otherwise each caption is encoded once and kept.
    """

    def __init__(self, components: ModelComponents, tokenizers: dict | None = None, trained: bool = False):
        tokenizers = tokenizers or {}
        self.components, self.trained = components, trained
        self.encoders = [(tokenizers.get(name, getattr(components, name.replace("text_encoder", "tokenizer"))), encoder)
                         for name, encoder in text_encoders(components).items()]
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _encode(self, texts: list[str], grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.components.is_sdxl:
            (tokenizer, encoder), = self.encoders
            with torch.set_grad_enabled(grad):
                return encode_texts(texts, tokenizer, encoder), None
        from ..prompts.conditioning import encode_sdxl_texts

        device = self.encoders[0][1].device
        return encode_sdxl_texts(texts, self.encoders, device, torch.float32, grad=grad)

    def states(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token states [B, L, D] and (SDXL) the pooled text [B, P]."""
        if self.trained:
            return self._encode(texts, grad=True)
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for text in missing:  # one at a time: a long caption's chunk count must not pad the others
            states, pooled = self._encode([text], grad=False)
            self.cache[text] = (states[0], None if pooled is None else pooled[0])
        rows = [self.cache[t] for t in texts]
        lengths = {states.shape[0] for states, _ in rows}
        if len(lengths) > 1:  # captions of different chunk counts in one batch: encode them together
            return self._encode(texts, grad=False)
        pooled = None if rows[0][1] is None else torch.stack([p for _, p in rows])
        return torch.stack([states for states, _ in rows]), pooled

    def __call__(self, texts: list[str], latents: torch.Tensor) -> dict:
        """The UNet's keyword arguments for `texts` captioning `latents` [B, C, h, w]."""
        states, pooled = self.states(texts)
        if pooled is None:
            return {"encoder_hidden_states": states}
        factor = self.components.vae_scale_factor
        time_ids = sdxl_time_ids(latents.shape[-2] * factor, latents.shape[-1] * factor, len(texts), states.device)
        return {"encoder_hidden_states": states, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


@torch.no_grad()
def encode_pictures(vae, pictures: torch.Tensor, device: torch.device, chunk: int = 8) -> torch.Tensor:
    """Scaled latents (the mean, no sampling: the same every run) of uint8 pictures [N, 3, H, W]."""
    vae.to(device)
    out = []
    for start in range(0, len(pictures), chunk):
        x = pictures[start : start + chunk].to(device).float() / 127.5 - 1.0
        out.append(vae.encode(x).latent_dist.mode().cpu() * vae.config.scaling_factor)
    return torch.cat(out)


class Latents:
    """A concept's latents, bucket by bucket, with each picture's caption lines."""

    def __init__(self, concept: Concept, vae, device: torch.device):
        self.latents = [encode_pictures(vae, bucket.images, device) for bucket in concept.buckets]
        self.captions = [bucket.captions for bucket in concept.buckets]
        self.counts = torch.tensor([len(b) for b in self.latents], dtype=torch.float64)

    def draw(self, batch_size: int, rng: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """A batch from one bucket (drawn by its share of the pictures), and a caption line for each."""
        bucket = int(draw_batch(len(self.latents), 1, rng, self.counts)[0])
        index = draw_batch(len(self.latents[bucket]), batch_size, rng).tolist()
        picks = torch.randint(0, 1 << 30, (batch_size,), generator=rng).tolist()
        lines = self.captions[bucket]
        return self.latents[bucket][index], [lines[i][p % len(lines[i])] for i, p in zip(index, picks)]


def noise_scheduler(components: ModelComponents) -> DDPMScheduler:
    return DDPMScheduler.from_config(components.scheduler_config)


def diffusion_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, conditioning: dict,
                   rng: torch.Generator) -> torch.Tensor:
    """The model's own objective (epsilon or v MSE) at random timesteps; noise drawn on the CPU.
    `conditioning` is the UNet's keyword arguments for the batch (`Captions`)."""
    noise = torch.randn(latents.shape, generator=rng)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=rng)
    device = conditioning["encoder_hidden_states"].device
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps) if scheduler.config.prediction_type == "v_prediction" else noise
    prediction = unet(noisy, timesteps, **conditioning).sample.float()
    return F.mse_loss(prediction, target.float())


class Sampler:
    """Pictures from the model as it is being trained, through the engine users run (fp32, on `device`)."""

    def __init__(self, components: ModelComponents, device: torch.device, size: int):
        from ..studio import Studio

        # No upscaler: the pictures stay at the size the model draws (reverie-mini's 128 px).
        self.components = dataclasses.replace(components, name=STUDIO_NAME, default_upscale=1)
        self.device, self.size = str(device), size
        self.studio = Studio(device=self.device)

    def pictures(self, prompt: str, seeds: range):
        from ..studio import make_request

        for module in self.components.modules:
            module.to(self.device)
        self.studio.add_model(STUDIO_NAME, self.components, device=self.device)
        for seed in seeds:
            # On torch: the weights change between grids, so an OpenVINO export would be out of date at once.
            request = make_request(prompt=prompt, model=STUDIO_NAME, seed=seed, n_samples=1, width=self.size,
                                   height=self.size, device=self.device, dtype="fp32", runtime="torch")
            yield self.studio.generate(request).images[0].image

    def grid(self, prompts: list[str], path: Path) -> Path:
        """One row per prompt, seeds 0..SAMPLE_SEEDS-1 across."""
        pictures = [picture for prompt in prompts for picture in self.pictures(prompt, range(SAMPLE_SEEDS))]
        path.parent.mkdir(parents=True, exist_ok=True)
        make_grid(pictures, columns=SAMPLE_SEEDS, row_labels=prompts).save(path)
        return path
