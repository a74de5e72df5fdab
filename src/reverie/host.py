"""What this machine's CPU computes and how much memory is free, and letting go of a mapped
file's pages, without importing torch (a request that runs on OpenVINO alone decides its
precision and its room without it, and compiles from mapped IR files; device.py answers the
same for every device)."""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from contextlib import contextmanager
from functools import cache
from pathlib import Path

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


# Linux's madvise advice (5.4 and later): page the range out. A shared file mapping's pages are
# let go, and leave the page cache where no other process maps them; anonymous memory would be
# swapped out, never lost. MADV_DONTNEED, used before, zeroes anonymous memory instead.
MADV_PAGEOUT = 21
# Files smaller than this are left mapped as they are: reverie-mini's parts (45 MB and less in
# bf16) save little, and read again from disk they cost its cold start 0.2 s (2.23 s against 2.02).
DROP_MIN_BYTES = 64 * 2**20


def drop_file_pages(path: str | Path) -> int:
    """Let go of this process's resident pages of `path` in its read-only shared mappings of it
    (OpenVINO maps its IR's weights file and keeps the mapping while it computes with repacked
    copies of its own): they count in the process's resident memory until then. A page read
    again comes back from the file, the same bytes (from disk where the page cache let it go).
    Answers the bytes of mapping let go; 0 where there is no /proc/self/maps (not Linux).
    The mappings are read first and paged out after. A mapping unmapped in between, its
    addresses taken by new memory, has that memory paged out, which is safe: MADV_PAGEOUT never
    discards anonymous pages (MADV_DONTNEED, used until 2026-12-05, zeroed them, and a test
    worker crashed in here once). Callers still keep their mapping alive while it runs."""
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
            if madvise(start, end - start, MADV_PAGEOUT) == 0:
                dropped += end - start
    return dropped


@contextmanager
def file_pages_dropped(path: str | Path, every_s: float = 0.05, min_bytes: int | None = None):
    """Run the block with `path`'s mapped pages let go every `every_s` seconds, and once after
    (`drop_file_pages`): a reader that goes through a mapped file once, OpenVINO compiling a
    model from its IR, then holds little more of the file than the part it is reading (SD 1.5's
    bf16 UNet: 1.9 GiB resident after a compile instead of 3.5). A file under `min_bytes`
    (DROP_MIN_BYTES when None) is left alone: the block just runs."""
    try:
        small = Path(path).stat().st_size < (DROP_MIN_BYTES if min_bytes is None else min_bytes)
    except OSError:
        small = True
    if small:
        yield
        return
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
