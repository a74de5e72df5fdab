"""The gan method: pictures from a trained GAN, each from its own seed, and latent-walk videos."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image

from ... import __version__
from ...device import pick_device
from ...errors import BadCheckpoint, BadRequest, ModelNotFound
from ...models.cache import ModelCache
from ...models.gan import GANGenerator, load_gan
from ...models.gan_folders import resolve_gan
from ...outputs.files import Outputs
from ...outputs.metadata import a1111_parameters, reverie_metadata
from ...pixels import to_picture
from ...progress import Progress, ProgressEvent
from ...result import GeneratedImage, Result
from ..upscale.pictures import upscaled
from .latents import seed_latent, slerp, walk
from .request import GANRequest

WALK_FPS = 12.0  # a latent walk's video


def gan_network(models: ModelCache, reference: str, device: torch.device) -> GANGenerator:
    """The GAN a reference names, through the shared cache; a wrong or damaged one is a BadRequest naming `model`."""
    try:
        folder = resolve_gan(reference)
        return models.get(("gan", str(folder.resolve()), str(device)), lambda: load_gan(folder).to(device))
    except (ModelNotFound, BadCheckpoint) as exc:
        raise BadRequest("model", str(exc)) from None


def class_index(network: GANGenerator, request: GANRequest, seed: int) -> int | None:
    """The class of the picture of `seed`: the one asked for, else one chosen by the seed; None when unconditional."""
    if not network.classes:
        if request.class_name is not None:
            raise BadRequest("class_name", "this GAN has no classes (it was trained unconditional); leave the class out")
        return None
    if request.class_name is None:
        return seed % len(network.classes)
    if request.class_name not in network.classes:
        raise BadRequest("class_name", f"this GAN has no class {request.class_name!r}; use one of {', '.join(network.classes)}")
    return network.classes.index(request.class_name)


@torch.no_grad()
def draw(network: GANGenerator, z: torch.Tensor, labels: torch.Tensor | None, truncation: float) -> torch.Tensor:
    device = network.w_mean.device
    return network(z.to(device), None if labels is None else labels.to(device), truncation)


def run(request: GANRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> Result:
    """Make `request.n_samples` pictures (picture i from seed+i, each drawn alone), write each as it
    is finished, then the grid, then the walk's video when asked for."""
    started = time.perf_counter()
    request = request.with_seed()
    device = pick_device(request.device)
    progress(ProgressEvent("load", message=f"loading {request.model}"))
    network = gan_network(models, request.model, device)
    seeds = request.image_seeds()
    classes = [class_index(network, request, seed) for seed in seeds]  # refuses a wrong class before any work
    result = Result(request=request)
    for index, (seed, label) in enumerate(zip(seeds, classes)):
        if index < request.made:
            continue
        if progress.stop_requested():
            result.interrupted = True
            break
        z = seed_latent(seed, network.z_dim)
        labels = None if label is None else torch.tensor([label])
        [picture] = upscaled([to_picture(draw(network, z, labels, request.truncation), -1.0, 1.0)], request.upscale, models)
        result.images.append(_write(picture, request, network, seed, index, label, outputs))
        progress(ProgressEvent("image", index + 1, request.picture_count(), payload=result.images[-1]))
    if result.images:
        first = result.images[0]
        result.grid_path = outputs.grid_of([image.image for image in result.images], _title(request, network, None),
                                           first.parameters, first.metadata)
    if request.walk and not result.interrupted and request.made == 0 and outputs.folder is not None:
        progress(ProgressEvent("walk", message=f"walking through {len(seeds)} pictures"))
        frames = walk_frames(network, seeds, classes, request, models)
        result.video = outputs.video(frames, request.seed, "walk", WALK_FPS, request.video_format)
    result.timings["generate_s"] = time.perf_counter() - started
    return result


def walk_frames(network: GANGenerator, seeds: list[int], classes: list[int | None], request: GANRequest,
                models: ModelCache) -> list[Image.Image]:
    """A loop through the seeds' latents: slerp between z, classes blended linearly."""
    keys = [seed_latent(seed, network.z_dim) for seed in seeds]
    onehot = None
    if network.classes:
        onehot = torch.nn.functional.one_hot(torch.tensor(classes), len(network.classes)).float()
    frames = []
    for i, t in walk(keys, request.walk):
        j = (i + 1) % len(keys)
        z = slerp(keys[i], keys[j], t)
        labels = None if onehot is None else ((1 - t) * onehot[i] + t * onehot[j])[None]
        frames.append(to_picture(draw(network, z, labels, request.truncation), -1.0, 1.0))
    return upscaled(frames, request.upscale, models)


def _title(request: GANRequest, network: GANGenerator, label: int | None) -> str:
    name = Path(request.model.removeprefix("gan:")).name or "gan"
    return f"{name} {network.classes[label]}" if label is not None else name


def _write(picture: Image.Image, request: GANRequest, network: GANGenerator, seed: int, index: int,
           label: int | None, outputs: Outputs) -> GeneratedImage:
    settings = request.settings() | {"reverie_version": __version__}
    metadata = reverie_metadata(settings, seed, index)
    if label is not None:
        metadata["class"] = network.classes[label]
    size = network.size * request.upscale
    parameters = a1111_parameters(_title(request, network, label), "", {
        "Seed": seed, "Size": f"{size}x{size}", "Model": request.model, "Truncation": request.truncation,
        "Class": network.classes[label] if label is not None else None,
        "Upscale": request.upscale if request.upscale > 1 else None,
    })
    image = GeneratedImage(picture, seed, index, metadata, parameters)
    image.path = outputs.picture(picture, seed, _title(request, network, label), parameters, metadata)
    return image
