"""What this machine's CPU computes and how much memory is free, read without importing torch
(a request that runs on OpenVINO alone decides its precision and its room without it; device.py
answers the same for every device)."""

from __future__ import annotations

import os
import platform
from functools import cache

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from /proc/cpuinfo's first `flags` line (or from `cpuinfo`, the
    text of one); empty where there is none (macOS, Windows)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16(flags: set[str]) -> bool:
    """Whether a CPU with these flags computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


@cache
def this_cpu_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively, from its flags; None where /proc/cpuinfo has none
    (macOS, Windows: device.py then asks oneDNN)."""
    flags = cpu_flags()
    return native_bf16(flags) if flags else None


def is_x86() -> bool:
    """Whether this CPU is x86-64 (where OpenVINO's CPU plugin computes bf16; elsewhere f32 and f16 only)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def free_memory() -> int:
    """Bytes that a new allocation in main memory can still get (REVERIE_MEMORY_LIMIT, which lets
    tests and shared hosts set a ceiling, else MemAvailable; 8 GiB where neither is known)."""
    limit = os.environ.get("REVERIE_MEMORY_LIMIT")
    if limit:
        return int(float(limit))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30
