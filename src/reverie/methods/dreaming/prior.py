"""A diffusion prior for dreams: score distillation from a text-to-image model.

CLIP alone is a poor judge of what a picture looks like: it rewards any texture that lands near
the words, which is why unguided dreams end as bright patterns. A diffusion model knows what its
pictures look like. Score distillation (DreamFusion's SDS) asks it, each iteration, how it
would denoise a noised copy of the dream and pulls the dream toward that answer:

    grad = w(t) * (eps_hat(z_t, t, prompt) - eps)

with `eps_hat` guided toward the dream's prompts as in composable diffusion (each prompt adds
its weight times its own direction; negative weights push away). The dream is seen at the
model's own size: the picture is resized and encoded by the model's autoencoder, and the
gradient flows back through the encoder, so the prior works for every generator (latents,
pixels, VQGAN, BigGAN), not only for one in the model's latent space. A dream made of the
model's own latents (the built-in generator with mini's prior) gives the prior those latents
whole instead: the encoder would hide from it what the decoder draws of off-manifold latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...prompts.conditioning import encode_prompt_pair
from .request import BUILTIN_GENERATOR

NO_PRIOR, AUTO_PRIOR = "none", "auto"
T_LOW, T_HIGH = 0.02, 0.98  # the share of the noise schedule the prior samples from
CROP_LOW = 0.6  # each iteration the prior sees a random crop of 60-100% of the side


def prior_for(reference: str, generator: str) -> str:
    """The model a dream's `prior` setting names; `auto` is reverie-mini for the built-in generator
    (its own autoencoder, its own world) and none for the others, whose pictures mini never made."""
    if reference == AUTO_PRIOR:
        return "mini" if generator == BUILTIN_GENERATOR else NO_PRIOR
    return reference


def random_crop(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random crop, 60-100% of the picture's side, same aspect: seen at the model's size, it
    shows the prior finer detail than the whole picture would (and keeps it from ignoring a grid
    of artefacts too fine to survive the downscale)."""
    height, width = pixels.shape[-2:]
    scale = float(torch.empty(1).uniform_(CROP_LOW, 1.0, generator=generator))
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    top = int(torch.randint(0, height - rows + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - cols + 1, (1,), generator=generator))
    return pixels[:, :, top : top + rows, left : left + cols]


@dataclass
class PriorPrompt:
    weight: float
    cond: torch.Tensor  # [1, L, D]
    uncond: torch.Tensor  # [1, L, D], the empty prompt at the same length


class DiffusionPrior:
    """Score distillation from `components` (a loaded text-to-image model) toward weighted prompts."""

    def __init__(self, components, prompts, guidance: float = 7.5, device: torch.device | str = "cpu"):
        from diffusers import DDPMScheduler

        if getattr(components, "is_sdxl", False):
            from ...errors import BadRequest

            raise BadRequest("prior", f"{components.name} is an SDXL model; a dream's prior is an SD 1.x/2.x model "
                                      "or reverie-mini for now")
        self.unet, self.vae = components.unet, components.vae
        self.device = torch.device(device)
        for module in (self.unet, self.vae):
            module.to(self.device).requires_grad_(False).eval()
        self.dtype = self.unet.dtype
        self.size = components.native_size
        self.scaling = float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)
        schedule = DDPMScheduler.from_config(components.scheduler_config)
        self.alphas = schedule.alphas_cumprod.to(self.device, torch.float32)
        self.prediction = schedule.config.prediction_type
        self.guidance = guidance
        self.tokenizer, self.text_encoder = components.tokenizer, components.text_encoder
        self._encoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # text -> (cond, uncond)
        self.set_prompts(prompts)

    def set_prompts(self, prompts) -> None:
        """Pull toward (or away from) these weighted prompts from now on; weights are relative to
        the positive ones' sum. Each text is encoded once (a dream video goes back to its prompts)."""
        positive = sum(p.weight for p in prompts if p.weight > 0) or 1.0
        self.prompts = []
        for prompt in prompts:
            if prompt.text not in self._encoded:
                cond, uncond = encode_prompt_pair(prompt.text, "", self.tokenizer, self.text_encoder)
                self._encoded[prompt.text] = cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype)
            self.prompts.append(PriorPrompt(prompt.weight / positive, *self._encoded[prompt.text]))

    def to_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's scaled latents of a [1,3,H,W] picture in [0,1], differentiably."""
        view = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        posterior = self.vae.encode((view * 2 - 1).to(self.dtype)).latent_dist
        return posterior.mean.float() * self.scaling

    def _eps(self, noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The UNet's noise estimate for `noisy` under each of the `states` (a batch of them)."""
        count = states.shape[0]
        batch = noisy.expand(count, -1, -1, -1)
        out = self.unet(batch.to(self.dtype), t.expand(count), encoder_hidden_states=states).sample.float()
        if self.prediction == "v_prediction":
            # v = sqrt(a) eps - sqrt(1-a) x0 and x_t = sqrt(a) x0 + sqrt(1-a) eps  =>  eps = sqrt(a) v + sqrt(1-a) x_t
            alpha = self.alphas[t]
            out = alpha.sqrt() * out + (1 - alpha).sqrt() * batch
        return out

    @torch.no_grad()
    def _noise_estimate(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided noise estimate: eps_uncond + guidance * sum_i w_i (eps_i - eps_uncond).

        Each prompt's empty prompt is padded to its length, so prompts of one length share one
        unconditional estimate: the UNet runs once per prompt, plus once per length.
        """
        unconditional: dict[int, torch.Tensor] = {}  # eps of the empty prompt, by length
        combined = torch.zeros_like(noisy)
        for prompt in self.prompts:
            length = prompt.uncond.shape[1]
            if length in unconditional:
                eps_c = self._eps(noisy, t, prompt.cond)
            else:
                unconditional[length], eps_c = self._eps(noisy, t, torch.cat([prompt.uncond, prompt.cond])).chunk(2)
            combined += prompt.weight * (eps_c - unconditional[length])
        return unconditional[self.prompts[0].uncond.shape[1]] + self.guidance * combined

    def loss(self, pixels: torch.Tensor, generator: torch.Generator, latents: torch.Tensor | None = None) -> torch.Tensor:
        """A loss whose gradient w.r.t. the dream's latents is the score-distillation step.

        `latents` (unscaled), when the dream is made of this model's own latents, are read whole
        and as they are: through the encoder the prior would see only what the encoder keeps, not
        the speckle that off-manifold latents draw at the decoder's full size.
        """
        if latents is None:
            latents = self.to_latents(random_crop(pixels, generator))
        else:
            latents = latents.float() * self.scaling
        steps = len(self.alphas)
        t = torch.randint(int(T_LOW * steps), int(T_HIGH * steps), (1,), generator=generator).to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        alpha = self.alphas[t]
        noisy = alpha.sqrt() * latents.detach() + (1 - alpha).sqrt() * noise
        eps_hat = self._noise_estimate(noisy, t)
        step = ((1 - alpha) * (eps_hat - noise)).nan_to_num()
        # d/dz of 0.5 * ||z - (z - step)||^2 / n is step / n: the SDS gradient, averaged per element.
        target = (latents - step).detach()
        return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents[0].numel()
