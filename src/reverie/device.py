"""Choosing where and in what precision to run, and refusing sizes that cannot fit."""

from __future__ import annotations

import ctypes
import gc
from functools import cache

import torch

from .host import free_memory, this_cpu_native_bf16
from .errors import BadRequest, OutOfMemory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadRequest("device", "CUDA was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadRequest("device", "MPS was asked for but is not available; use --device cpu or auto")
    return device


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX); without it bf16 is emulated,
    many times slower than fp32 (a decoder training step: 30x on a 2-core AMD EPYC; an SD 1.5
    UNet step at 256 px: see benchmarks/README.md). Read from /proc/cpuinfo's flags; where
    there is no /proc/cpuinfo, from what oneDNN says."""
    native = this_cpu_native_bf16()
    if native is not None:
        return native
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(name: str, device: torch.device, *, native_cpu_bf16: bool | None = None) -> torch.dtype:
    """`auto` is fp16 on CUDA/MPS; on the CPU bf16 where the CPU computes it natively
    (avx512_bf16 or amx_bf16 in its flags: about twice fp32's speed, a picture close to fp32's)
    and fp32 elsewhere (emulated bf16 is several times slower than fp32; fp16 is slow and lossy
    there). `native_cpu_bf16` overrides what the CPU's flags say (tests)."""
    if name == "auto":
        if device.type in ("cuda", "mps"):
            return torch.float16
        native = cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16
        return torch.bfloat16 if native else torch.float32
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise BadRequest("dtype", "fp16 is not supported on the CPU; use fp32 or bf16")
    return dtype


def release_freed_memory() -> None:
    """Hand what Python and torch have freed back to the system now (glibc's `malloc_trim`), so
    that a large model let go shows as free memory at once; nothing where the C library has none."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_memory(device: torch.device) -> int:
    """Bytes that a new allocation on `device` can still get."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return free_memory()


def estimate_peak_bytes(
    *,
    width: int,
    height: int,
    batch: int,
    latent_channels: int,
    vae_scale: int,
    dtype: torch.dtype,
    vae_tiling: bool,
    largest_vae_channels: int = 128,
    unet_scale: float = 1.0,
    vae_dtype: torch.dtype | None = None,
) -> int:
    """A deliberately generous estimate of the activation memory one batch needs.

    The UNet's activations grow with the latent area; the VAE decoder's with the picture area
    times its widest full-resolution layer. Decoding is done one image at a time, and a tiled
    decode only ever holds one 512x512 tile. `unet_scale` scales the UNet's part for models
    heavier than SD's (SDXL); `vae_dtype` is the VAE's own dtype when it differs (SDXL's runs
    in float32 under float16).
    """
    bytes_per = torch.finfo(dtype).bits // 8
    latent_area = (width // vae_scale) * (height // vae_scale)
    # Per latent pixel: conv/attention activations of an SD-sized UNet, for the CFG pair.
    unet = int(2 * batch * latent_area * 320 * 12 * bytes_per * unet_scale)
    pixels = min(width * height, 512 * 512) if vae_tiling else width * height
    vae = pixels * largest_vae_channels * 6 * (torch.finfo(vae_dtype or dtype).bits // 8)
    return unet + vae


GENERATION_ADVICE = ("make the picture smaller (width/height), use fewer samples per batch (n_samples), "
                     "or turn on VAE tiling (--vae-tiling)")


def check_fits(need: int, device: torch.device, advice: str = GENERATION_ADVICE) -> None:
    """Refuse, before any work, a request whose estimated peak memory exceeds what is free;
    `advice` says what to change."""
    free = available_memory(device)
    if need > free:
        raise OutOfMemory(
            f"this request needs about {need / 2**30:.1f} GiB on {device.type} but only "
            f"{free / 2**30:.1f} GiB is free; {advice}"
        )
