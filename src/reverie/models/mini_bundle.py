"""reverie-mini as one OpenVINO bundle (models/openvino_bundle.py): its text encoder, UNet, VAE
decoder and encoder and x2 upscaler, exported once and then run without torch (issue 22: a cold
`reverie generate` spent 5.8 of its 8 s importing torch and diffusers, and a warm request ran
four networks on two runtimes).

`make_bundle` (which imports torch) exports the five parts of reverie-mini as the torch path
loads them (models/mini.py, minilm.py, upscaler.py), into one folder under the cache
(`$REVERIE_CACHE/openvino/mini-<key>/`). The key covers the weight files' paths, sizes and
modification times, the precision and the versions of what exports them (openvino, torch,
diffusers, transformers: read from the installed packages' metadata, so the key is had without
importing them). methods/diffusion/compiled.py runs it: each part in the bundle's precision
(bf16 on a CPU that computes it natively, as `dtype auto` picks; the upscaler in bf16 there
whatever the request's dtype, as torch's autocast runs it), its compiled shapes kept on disk in
the bundle's `compiled/` folder (34 MB each): a fresh process loads a shape it compiled before.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .mini import MINI_DIR, MINI_NAME, weight_files
from .openvino_bundle import (bundle_facts, bundle_path, in_fp32, make_tile_parts, save_bundle, torch_dtype_of,
                              vae_parts, with_extra_rows)

log = logging.getLogger(__name__)

FORMAT = 4  # bump when a part's graph or inputs change, or what done.json holds


def _source_files() -> list[Path]:
    """The files the bundle is made from: mini's UNet and VAE, MiniLM and the x2 upscaler."""
    from .minilm import model_path
    from .upscaler_files import UPSCALER_DIR, WEIGHTS_X2

    files = []
    for component in ("unet", "vae"):
        files += [MINI_DIR / component / "config.json", *weight_files(MINI_DIR / component)]
    text = Path(model_path())
    files += [text / "config.json", text / "model.safetensors", text / "tokenizer.json", UPSCALER_DIR / WEIGHTS_X2]
    return files


def bundle_folder(precision: str, cache: Path | None = None) -> Path:
    """Where the bundle for `precision` (bf16 or f32) lives: named by what it is made from."""
    return bundle_path("mini", FORMAT, precision, _source_files(), cache)


# ----------------------------------------------------------------------------- making it (torch)


def make_bundle(folder: Path, precision: str) -> None:
    """Export reverie-mini's five parts into `folder` (atomically: a temporary folder renamed
    into place), replacing older bundles beside it (made from other files or versions)."""
    import openvino as ov
    import torch

    from .latent_rgb import fit_latent_to_rgb
    from .mini import load_mini
    from .openvino_runtime import unet_part
    from .upscaler import load_upscaler

    started = time.perf_counter()
    dtype = torch_dtype_of(precision)
    mini = load_mini(dtype)
    unet, vae, text_encoder = mini.unet, mini.vae, mini.text_encoder
    upscaler = load_upscaler(scale=2).to(memory_format=torch.contiguous_format)
    vocab, width = text_encoder.get_input_embeddings().weight.shape
    ids = torch.ones(2, 8, dtype=torch.int64)
    parts = {
        # token ids and mask [n, L], rows for added tokens [E, D] -> token states [n, L, D], fp32
        "text_encoder": (with_extra_rows(text_encoder, lambda m, i, mask: m(i, attention_mask=mask)[0]),
                         (ids, ids, torch.zeros(1, width)),
                         [([-1, -1], ov.Type.i64), ([-1, -1], ov.Type.i64), ([-1, width], ov.Type.f32)]),
        # latents, timestep, text states -> the model's output, fp32 (as the torch path's export)
        "unet": unet_part(unet),
        **vae_parts(vae, dtype),
        # pixels in [-1, 1] -> twice as large, in [-1, 1] (unclamped)
        "upscaler": (in_fp32(upscaler), (torch.rand(1, 3, 32, 32) * 2 - 1,), [([-1, 3, -1, -1], ov.Type.f32)]),
    }
    save_bundle(folder, parts, {"precision": precision, "model": f"{MINI_NAME} {precision}",
                                "export_s": round(time.perf_counter() - started, 1),
                                "latent_rgb": fit_latent_to_rgb(vae).tolist(), "vocab": int(vocab),
                                "text_width": int(width)}, replaces="model")
    for old in folder.parent.glob("mini-*"):  # made before markers named their model: replaced too
        made = bundle_facts(old)
        if old != folder and "model" not in made and made.get("precision") == precision:
            shutil.rmtree(old, ignore_errors=True)
    log.info("exported reverie-mini to OpenVINO in %.1f s: %s", time.perf_counter() - started, folder)


def make_tile_bundle(folder: Path, precision: str) -> None:
    """Export reverie-mini's UNet and VAE for seamless tiles beside its bundle in `folder`
    (openvino_bundle.make_tile_parts), with the margin its x2 upscaler enlarges a tile with."""
    from .mini import load_mini
    from .upscaler import load_upscaler, wrap_margin

    dtype = torch_dtype_of(precision)
    mini = load_mini(dtype)
    make_tile_parts(folder, mini.unet, mini.vae, dtype, {"upscale_margin": wrap_margin(load_upscaler(scale=2))})
