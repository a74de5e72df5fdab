"""A diffusion model set up for a video's frames: settings resolved once, prompts encoded once,
each frame painted from given conditioning and noise (walk) or from a given picture (animate).

A frame's conditioning is a tuple of tensors: (cond, uncond) for SD 1.x/2.x and reverie-mini,
(cond, uncond, pooled, negative pooled) for SDXL, whose pipelines also take the pooled text and
the size conditioning of a picture of the working size. Two prompts blend tensor by tensor.

A frame is made exactly as the diffusion method makes a picture alone (`denoise_batch` with one
seed, the same size, sampler and memory settings), so a walk's stops are the pictures their
prompt and seed make on their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from ...device import pick_device, pick_dtype
from ...errors import BadRequest
from ...models.cache import ModelCache
from ...models.components import ModelComponents
from ...models.embeddings import use_embeddings
from ...models.lora import apply_loras
from ...progress import Progress, ProgressEvent
from ...prompts.conditioning import SDXLConditioning, encode_prompt_batch
from ...prompts.extra_networks import LoraUse, extract_pair
from ..diffusion.batches import denoise_batch, finish, initial_noise, latent_shape, sdxl_arguments, sdxl_conditioning
from ..diffusion.inputs import PreparedInput, denoising_steps, prepare_input
from ..diffusion.pipelines import memory_settings
from ..diffusion.request import GenerationRequest, resolve
from ..diffusion.run import diffusion_model, fit_memory, on_runtime
from ..gan.latents import slerp
from .request import VideoRequest


ENCODED_KEPT = 64  # encoded prompts a video keeps (an SD prompt's pair: 0.5 MB in fp32)


def mix(a: torch.Tensor, b: torch.Tensor, t: float, spherical: bool = False) -> torch.Tensor:
    """a at t=0 and b at t=1, exactly; linear (conditioning) or spherical (noise) between."""
    if t <= 0.0:
        return a
    if t >= 1.0:
        return b
    if not spherical:
        return torch.lerp(a, b, t)
    return slerp(a.flatten()[None], b.flatten()[None], t).view_as(a)


@dataclass
class Painter:
    request: GenerationRequest  # the frames' settings, resolved: model, steps, sampler, CFG, size
    components: ModelComponents
    prepared: PreparedInput  # the working size, and the factor frames are shown enlarged by
    device: torch.device
    dtype: torch.dtype
    loras: list[LoraUse] = field(default_factory=list)  # every frame's (each prompt names the same ones)
    encoded: dict = field(default_factory=dict)
    unet: object = None  # the runtime's stand-in for the UNet (OpenVINO's), or None: the torch UNet

    @classmethod
    def load(cls, video: VideoRequest, prompt: str, models: ModelCache, progress: Progress,
             aspect_ratio: str | None = None) -> "Painter":
        """The model of `video`, loaded through the shared cache, with its frames' settings as a
        txt2img request of `prompt` would have them; with `aspect_ratio` ("W:H"), the sides the
        video leaves out take that shape, as a picture's do."""
        fields = video.frame_fields(prompt, video.seed) | ({"aspect_ratio": aspect_ratio} if aspect_ratio else {})
        request = resolve(GenerationRequest.build(**fields))
        device = pick_device(request.device)
        dtype = pick_dtype(request.dtype, device)
        progress(ProgressEvent("load", message=f"loading {request.model}"))
        components = diffusion_model(models, request.model, device, dtype, request.weights, torch_unet=False)
        request = request.with_defaults(components.sampling)
        prepared = prepare_input(request, components)
        # The frames' UNet runs where a picture of theirs would (`runtime auto`: OpenVINO for SD
        # and reverie-mini), so a walk's stop is the picture `reverie generate` makes of it.
        request, components, unet = on_runtime(models, request, components, prepared, device, dtype)
        request = fit_memory(request, components, prepared, device, dtype)
        _, _, loras = extract_pair(prompt, request.negative_prompt)
        return cls(request, components, prepared, device, dtype, loras, unet=unet)

    @property
    def size(self) -> tuple[int, int]:
        return self.prepared.width, self.prepared.height

    @property
    def factor(self) -> int:
        return self.prepared.factor

    def settings(self) -> dict:
        """What the frames were made with, for the video's record."""
        r = self.request
        return {"model": r.model, "model_name": self.components.name, "steps": r.steps, "sampler": r.sampler,
                "cfg_scale": r.cfg_scale, "working_size": list(self.size), "upscale": self.factor, "runtime": r.runtime}

    def _pair(self, prompt: str) -> tuple[str, str]:
        """`prompt` and the negative prompt as encoded: LoRA tags out (every prompt of a video names
        the same LoRAs: one UNet makes all its frames), embedding names in as their tokens."""
        prompt, negative, loras = extract_pair(prompt, self.request.negative_prompt)
        if loras != self.loras:
            raise BadRequest("prompts", "every prompt of a video names the same LoRAs with the same weights (one "
                                        f"model makes all its frames); {' '.join(u.tag() for u in loras) or 'none'} "
                                        f"differs from {' '.join(u.tag() for u in self.loras) or 'none'}")
        (prompt, negative), _ = use_embeddings(self.components, [prompt, negative])
        return prompt, negative

    def encode(self, prompt: str) -> tuple[torch.Tensor, ...]:
        """The conditioning of `prompt` with the video's negative prompt (rows [1, ...]), each
        encoded once (of the last ENCODED_KEPT prompts: a weight that changes every frame makes a
        prompt a frame)."""
        if len(self.encoded) >= ENCODED_KEPT:
            self.encoded.clear()
        return self._encoded([self._pair(prompt)], self.encoded)

    def conditioning(self, before: str, after: str, weight: float) -> tuple[torch.Tensor, ...]:
        """Two prompts' conditioning blended, `weight` of the second (prompts as long as each other:
        each is padded to whole chunks)."""
        a = self.encode(before)
        if weight <= 0:
            return a
        b = self.encode(after)
        if a[0].shape != b[0].shape:  # one prompt has more 75-token chunks: pad the other with empty ones
            both = self._encoded([self._pair(before), self._pair(after)], {})
            a, b = tuple(rows[:1] for rows in both), tuple(rows[1:] for rows in both)
        return tuple(mix(x, y, weight) for x, y in zip(a, b))

    def _encoded(self, pairs: list[tuple[str, str]], cache: dict) -> tuple[torch.Tensor, ...]:
        with apply_loras(self.components, self.loras):
            if self.components.is_sdxl:
                encoded = sdxl_conditioning(self.components, pairs, self.device, self.dtype, cache)
                return encoded.cond, encoded.uncond, encoded.pooled, encoded.negative_pooled
            cond, uncond = encode_prompt_batch(pairs, self.components.tokenizer, self.components.text_encoder,
                                               device=self.device, cache=cache)
        return cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype)

    def _sdxl(self, conditioning: tuple, prepared: PreparedInput) -> dict | None:
        """An SDXL pipeline's further arguments for `conditioning` (None for other models)."""
        return sdxl_arguments(SDXLConditioning(*conditioning), prepared) if len(conditioning) == 4 else None

    def noise(self, seed: int) -> torch.Tensor:
        """The starting latents [1, C, h, w] a txt2img picture of `seed` draws."""
        noise, _ = initial_noise([seed], latent_shape(self.components, *self.size))
        return noise

    def txt2img(self, conditioning: tuple, seed: int, progress: Progress, noise: torch.Tensor | None = None) -> Image.Image:
        """A frame from noise (`seed`'s own, or `noise`), at the working size; `seed`'s generator
        feeds the sampler's fresh noise."""
        with memory_settings(self.components, bool(self.request.vae_tiling), self.request.attention_slicing), \
                apply_loras(self.components, self.loras):
            [picture] = denoise_batch(self.request, self.components, self.prepared, [seed], *conditioning[:2],
                                      self.device, self.dtype, 0, progress, noise=noise,
                                      sdxl=self._sdxl(conditioning, self.prepared), unet=self.unet)
        return picture

    def img2img(self, picture: Image.Image, conditioning: tuple, seed: int, strength: float, cfg: float | None,
                progress: Progress) -> Image.Image:
        """`picture` painted again at `strength` (0 returns it untouched), at the working size."""
        if strength <= 0:
            return picture.copy()
        request = self.request.model_copy(update={"mode": "img2img", "strength": strength,
                                                  "cfg_scale": self.request.cfg_scale if cfg is None else cfg})
        prepared = PreparedInput(*self.size, image=picture.convert("RGB"))
        with memory_settings(self.components, bool(self.request.vae_tiling), self.request.attention_slicing), \
                apply_loras(self.components, self.loras):
            [made] = denoise_batch(request, self.components, prepared, [seed], *conditioning[:2],
                                   self.device, self.dtype, 0, progress, sdxl=self._sdxl(conditioning, prepared),
                                   unet=self.unet)
        return made

    def shown(self, pictures: list[Image.Image], models: ModelCache, progress: Progress) -> list[Image.Image]:
        """Frames as the video shows them: enlarged by the factor a picture of this model is."""
        return finish(pictures, self.prepared, self.request, models, progress)

    def steps_for(self, strength: float) -> int:
        """UNet steps an img2img frame at `strength` runs (0: none)."""
        return 0 if strength <= 0 else int(denoising_steps(self.request.steps, strength) * strength)

    @torch.no_grad()
    def seconds_per_step(self) -> float:
        """One guided UNet step at the working size, timed: what a frame's time is estimated from."""
        _, height, width = latent_shape(self.components, *self.size)
        channels = self.components.unet.config.in_channels  # 9 for an inpainting model
        conditioning = self._encoded([("", "")], {})
        latents = torch.zeros(2, channels, height, width, device=self.device, dtype=self.dtype)
        states = torch.cat([conditioning[1], conditioning[0]])
        more = {}
        if len(conditioning) == 4:  # SDXL: the pooled text, and a picture of the working size, uncropped
            size = [float(side) for side in (*self.size[::-1], 0, 0, *self.size[::-1])]
            more["added_cond_kwargs"] = {"text_embeds": torch.cat([conditioning[3], conditioning[2]]),
                                         "time_ids": torch.tensor([size, size], device=self.device, dtype=self.dtype)}
        timestep = torch.tensor(500, device=self.device)
        unet = self.unet or self.components.unet
        unet(latents, timestep, encoder_hidden_states=states, **more)  # warm-up (OpenVINO compiles the shape)
        started = time.perf_counter()
        unet(latents, timestep, encoder_hidden_states=states, **more)
        return time.perf_counter() - started
