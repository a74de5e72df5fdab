"""Choosing where and in what precision to run, and refusing sizes that cannot fit."""

from __future__ import annotations

import ctypes
import gc
import threading
from contextlib import contextmanager
from functools import cache
from pathlib import Path

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


MADV_DONTNEED = 4  # Linux's madvise advice: let the pages go; a shared file mapping's come back from the file


def drop_file_pages(path: str | Path) -> int:
    """Let go of this process's resident pages of `path` in its read-only shared mappings of it
    (OpenVINO maps its IR's weights file and keeps the mapping while it computes with repacked
    copies of its own): they count in the process's resident memory until then. The file stays
    in the system's page cache, and a page read again comes back from there, the same bytes.
    Answers the bytes of mapping let go; 0 where there is no /proc/self/maps (not Linux)."""
    target = str(Path(path).resolve())
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    dropped = 0
    for line in lines:
        fields = line.split(maxsplit=5)  # address perms offset device inode path (which may hold spaces)
        if len(fields) == 6 and fields[1] == "r--s" and fields[5] == target:
            start, end = (int(address, 16) for address in fields[0].split("-"))
            if madvise(start, end - start, MADV_DONTNEED) == 0:
                dropped += end - start
    return dropped


@contextmanager
def file_pages_dropped(path: str | Path, every_s: float = 0.05):
    """Run the block with `path`'s mapped pages let go every `every_s` seconds, and once after
    (`drop_file_pages`): a reader that goes through a mapped file once, OpenVINO compiling a
    model from its IR, then holds little more of the file than the part it is reading (SD 1.5's
    bf16 UNet: 1.9 GiB resident after a compile instead of 3.5)."""
    stop = threading.Event()

    def drop() -> None:
        while not stop.wait(every_s):
            drop_file_pages(path)

    dropper = threading.Thread(target=drop, name="drop-file-pages", daemon=True)
    dropper.start()
    try:
        yield
    finally:
        stop.set()
        dropper.join()
        drop_file_pages(path)


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
