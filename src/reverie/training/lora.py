"""DreamBooth-style LoRA training: a frozen base model learns a concept in low-rank adapters.

PEFT's LoraConfig puts adapters of rank r on the UNet's attention projections (to_q, to_k,
to_v, to_out.0) and, when asked, on a CLIP text encoder's (q_proj, k_proj, v_proj, out_proj);
only they train, as one part of the shared Trainer (training/loop.py), so a run resumes bit for
bit, shows a progress bar and writes sample grids from fixed seeds. Its checkpoints hold the
adapters alone (`Adapters`), not the frozen base.

Prior preservation (DreamBooth, Ruiz et al. 2022): before training, the base model draws
`class_images` pictures of the class prompt into RUN/class_images/ (once: a resumed run reads
them back); each step then adds the loss on a batch of them, weighted `prior_weight`, so the
adapters learn the concept without forgetting what the class looks like.

The end of a run writes RUN/NAME.safetensors in kohya's format (training/lora_file.py).
reverie-mini's text encoder is MiniLM, not CLIP: its LoRAs are UNet-only. On SDXL the UNet sees
what generation gives it (personal.Captions), and `--text-encoder` adapts both encoders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from peft import LoraConfig, inject_adapter_in_model

from ..errors import BadRequest
from .data.concept import Bucket, Concept, read_concept
from .loop import Part, TrainConfig, Trainer
from .lora_file import LoraMetadata, kohya_state_dict, write_lora
from .personal import Captions, Latents, Sampler, diffusion_loss, is_clip, load_base, noise_scheduler, text_encoders

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
CLASS_FOLDER = "class_images"


@dataclass
class LoraSettings:
    """What a LoRA run learns, beside the TrainConfig (steps, batch size, lr, seed, device)."""

    trigger: str
    rank: int = 8
    alpha: float = 8.0
    resolution: int | None = None  # None: the model's native size
    buckets: bool = True
    text_encoder: bool = False  # adapters on the (CLIP) text encoder too
    prior_preservation: bool = False
    class_prompt: str | None = None
    class_images: int = 50
    prior_weight: float = 1.0
    name: str = ""  # the file's name (A1111's <lora:NAME:1>); "" : the run folder's name
    half: bool = True  # write fp16 tensors, as kohya does by default

    def check(self) -> None:
        if not self.trigger.strip():
            raise BadRequest("trigger", "give the word that will call up the concept, e.g. --trigger sks")
        if self.rank < 1:
            raise BadRequest("rank", "the rank is a whole number of at least 1 (4 to 32 are usual)")
        if self.alpha <= 0:
            raise BadRequest("alpha", "alpha must be above 0 (the rank, or half of it, is usual)")
        if self.prior_preservation and not (self.class_prompt or "").strip():
            raise BadRequest("class_prompt", "prior preservation draws pictures of the class: give --class-prompt "
                                             "\"a photo of a cat\"")
        if self.prior_preservation and self.class_images < 1:
            raise BadRequest("class_images", "prior preservation needs at least 1 class picture (50 to 200 are usual)")


class Adapters(torch.nn.Module):
    """The networks a run adapts; its state dict (and so each checkpoint) holds the trainable tensors only."""

    def __init__(self, networks: dict[str, torch.nn.Module]):
        super().__init__()
        self.networks = torch.nn.ModuleDict(networks)

    def _trainable(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        trainable = self._trainable()
        return {k: v for k, v in super().state_dict(prefix=prefix, keep_vars=keep_vars).items()
                if k[len(prefix):] in trainable}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        expected = self._trainable()
        if strict and set(state_dict) != expected:
            raise RuntimeError(f"the checkpoint's adapters differ from this run's: {len(set(state_dict) ^ expected)} "
                               f"tensors differ (was it trained with another rank or targets?)")
        return super().load_state_dict(state_dict, strict=False, assign=assign)


def add_adapters(components, settings: LoraSettings, seed: int) -> dict[str, torch.nn.Module]:
    """PEFT LoRA adapters on the UNet (and the text encoders when asked); the networks that have them."""
    config = dict(r=settings.rank, lora_alpha=settings.alpha, init_lora_weights="gaussian")
    adapted = {"unet": components.unet}
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the adapters' starting weights; a resumed run loads its own over them
        components.unet.add_adapter(LoraConfig(target_modules=UNET_TARGETS, **config))
        if settings.text_encoder:
            check_text_encoders(components)
            for name, encoder in text_encoders(components).items():
                # PEFT's own injection: transformers' add_adapter asks for a newer PEFT than the pinned one.
                inject_adapter_in_model(LoraConfig(target_modules=CLIP_TARGETS, **config), encoder)
                adapted[name] = encoder
    return adapted


def check_text_encoders(components) -> None:
    """Text-encoder LoRAs are CLIP's (kohya's lora_te_ keys); reverie-mini's MiniLM has none."""
    for encoder in text_encoders(components).values():
        if not is_clip(encoder):
            raise BadRequest("text_encoder", f"{components.name}'s text encoder is {encoder.config.model_type}, not "
                                             f"CLIP: its LoRAs are UNet-only (leave out --text-encoder)")


def class_pictures(components, out: Path, prompt: str, count: int, size: int, device: torch.device) -> Concept:
    """The base model's pictures of the class (drawn once into out/class_images/, seeds 0..count-1), read back."""
    from .data.concept import read_picture

    folder = out / CLASS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"class-{i:04d}.png" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        sampler = Sampler(components, device, size)
        for i, picture in zip(missing, sampler.pictures(prompt, missing)):
            picture.save(paths[i])
    # Read back from the files in every run, so a resumed run sees what an uninterrupted one saw.
    bucket = Bucket((size, size), [read_picture(p, (size, size)) for p in paths], [[prompt]] * count, paths)
    return Concept(folder, [bucket])


@dataclass
class TrainedLora:
    """A finished run: the file it wrote, and the base model with the trained adapters on (`networks`)."""

    file: Path
    components: object
    networks: dict[str, torch.nn.Module]


def train_lora(folder: str | Path, model: str, out: str | Path, config: TrainConfig, settings: LoraSettings,
               quiet: bool = False, on_step: Callable[[int], None] | None = None) -> TrainedLora:
    """Train (or resume) a LoRA of `model` on the pictures in `folder`; write RUN/NAME.safetensors (kohya).
    `on_step(step)` follows each step, its samples written (a studio job's progress; see `Trainer.run`)."""
    settings.check()
    out = Path(out)
    started = time.time()
    components = load_base(model)
    if settings.text_encoder:
        check_text_encoders(components)
    resolution = settings.resolution or components.native_size
    concept = read_concept(folder, settings.trigger, resolution, components.size_multiple, settings.buckets,
                           settings.class_prompt)
    from .device import training_device

    device = training_device(config.device)
    prior = None
    if settings.prior_preservation:
        prior = class_pictures(components, out, settings.class_prompt, settings.class_images, resolution, device)
    latents = Latents(concept, components.vae, device)
    prior_latents = Latents(prior, components.vae, device) if prior is not None else None
    components.vae.to("cpu")

    adapted = add_adapters(components, settings, config.seed)
    trainer = Trainer({"lora": Part(Adapters(adapted), schedule="constant", ema=False, weight_decay=0.0)}, out, config, "lora")
    for module in components.modules:
        module.to(trainer.device)
    scheduler = noise_scheduler(components)
    conditioning = Captions(components, trained=settings.text_encoder)  # the encoders learn: gradients every time

    def step(step_index: int, rng: torch.Generator) -> dict:
        batch, captions = latents.draw(config.batch_size, rng)
        loss = diffusion_loss(components.unet, scheduler, batch, conditioning(captions, batch), rng)
        metrics = {"instance_loss": loss.detach()}
        if prior_latents is not None:
            prior_batch, prior_captions = prior_latents.draw(config.batch_size, rng)
            prior_loss = diffusion_loss(components.unet, scheduler, prior_batch, conditioning(prior_captions, prior_batch), rng)
            loss = loss + settings.prior_weight * prior_loss
            metrics["prior_loss"] = prior_loss.detach()
        return {"loss": loss, **metrics}

    sampler = Sampler(components, trainer.device, resolution)
    prompts = sample_prompts(concept, settings)

    def sample(step_index: int, samples: Path) -> None:
        sampler.grid(prompts, samples / f"lora-{step_index:06d}.png")

    trainer.run(step, sample if config.sample_every > 0 else None, quiet=quiet, on_step=on_step)

    name = settings.name or out.name
    tensors = kohya_state_dict(components.unet, {k: v for k, v in adapted.items() if k != "unet"}, settings.alpha,
                               torch.float16 if settings.half else torch.float32, sgm_unet=components.is_sdxl)
    metadata = LoraMetadata(
        family=components.family, rank=settings.rank, alpha=settings.alpha,
        prediction_type=components.scheduler_config.get("prediction_type", "epsilon"), title=name, base_model=model,
        resolution=(resolution, resolution), steps=config.steps, lr=config.lr, seed=config.seed, pictures=len(concept),
        trigger=settings.trigger, tag_frequency={concept.folder.name: concept.tag_frequency()}, started_at=started,
        text_encoder_trained=settings.text_encoder)
    file = write_lora(out / f"{name}.safetensors", tensors, metadata)
    return TrainedLora(file, components, adapted)


def sample_prompts(concept: Concept, settings: LoraSettings) -> list[str]:
    """The concept's first caption, the trigger with the class, and the class alone (what the prior keeps)."""
    prompts = [concept.buckets[0].captions[0][0]]
    if settings.class_prompt:
        prompts += [f"{settings.trigger} {settings.class_prompt}", settings.class_prompt]
    return list(dict.fromkeys(prompts))
