"""A tiny decoder (TAESD) as a one-part OpenVINO bundle (models/openvino_bundle.py), for the
torch-free path (methods/diffusion/compiled.py): `--decoder tiny` pictures and live previews.

A request whose pictures or previews a tiny decoder in the models folder draws used to run on
the torch pipeline: putting TAESD's files in `taesd/` for better previews moved every studio job
off the torch-free path. `tiny_bundle(path, precision)` gives the decoder at `path` (a diffusers
AutoencoderTiny folder or A1111's single decoder file: tiny_decoder_files.find_tiny_decoder) as
a bundle, made once (torch imported that once) into `$REVERIE_CACHE/openvino/taesd-<key>/`, the
key naming its files as a model's bundle's key does. Its part "decoder" takes the pipeline's
latents [1, C, h, w] (TAESD reads them as they are: its scaling factor is 1) to pixels in
[-1, 1], unclamped, as `tiny_decoder.tiny_decode` decodes before it brings them to [0, 1]. The
marker records the latent channels it reads and how many times it enlarges them, so whether it
fits a model is told without torch (`fits`), as tiny_decoder.check_decoder_fits tells it.
"""

from __future__ import annotations

from pathlib import Path

from .openvino_bundle import OpenVINOBundle, bundle_made, bundle_path, in_fp32, save_bundle
from .tiny_decoder_files import DIFFUSERS_FILES

FORMAT = 1  # bump when the part's graph or inputs change, or what done.json holds


def tiny_bundle_folder(path: Path, precision: str) -> Path:
    """Where the bundle of the tiny decoder at `path` lives for `precision` (bf16 or f32)."""
    files = [path / name for name in DIFFUSERS_FILES] if path.is_dir() else [path]
    return bundle_path("taesd", FORMAT, precision, files)


def tiny_bundle(path: Path, precision: str) -> OpenVINOBundle:
    """The tiny decoder at `path` as a bundle, made first where it is not yet (BadCheckpoint
    for files that are not a tiny decoder)."""
    folder = tiny_bundle_folder(path, precision)
    if not bundle_made(folder):
        make_tiny_bundle(path, folder, precision)
    return OpenVINOBundle(folder, {"decoder": precision})


def fits(bundle: OpenVINOBundle, latent_channels: int, scale: int) -> bool:
    """Whether the decoder reads a model's latents: as many channels, enlarged `scale` times."""
    return (bundle.facts.get("latent_channels"), bundle.facts.get("scale")) == (latent_channels, scale)


def make_tiny_bundle(path: Path, folder: Path, precision: str) -> None:
    """Export the tiny decoder at `path` into `folder`, for `precision` (torch); it replaces the
    bundles of that decoder's earlier files at that precision."""
    import openvino as ov
    import torch

    from .tiny_decoder import load_tiny_decoder

    decoder = load_tiny_decoder(path)
    config = decoder.config
    channels = int(config.latent_channels)
    scale = int(config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1))
    parts = {"decoder": (in_fp32(decoder, lambda m, z: m.decode(z, return_dict=False)[0]),
                         (torch.randn(1, channels, 16, 16),), [([-1, channels, -1, -1], ov.Type.f32)])}
    save_bundle(folder, parts, {"model": f"taesd {path.resolve()} {precision}", "latent_channels": channels,
                                "scale": scale, "latent_rgb": []}, replaces="model")
