"""Memory of loading a Stable Diffusion 1.5 single file (issue 22: "load weights straight to
their final dtype without an fp32 copy").

The random-weight SD 1.5 model (benchmarks/sd15_random.py) is written once as an A1111-style
.safetensors file with fp32 weights (4.0 GB, as the public v1-5-pruned-emaonly file). Each
variant then loads it in a fresh process and reports the process's peak resident memory
(its VmHWM: the file's pages count while they are mapped), what stays resident, and the seconds:

- `stream`: reverie's loader (`load_single_file`), which reads a 16-bit request's tensors one by
  one without a memory map, narrowing each as it comes (models/single_file.py);
- `mapped`: the same loader reading the whole file with safetensors' `load_file` first, as it
  did before (and as diffusers' own loaders do): the fp32 file all resident, then the model.

An fp32 request reads the file mapped in both (its tensors are then the file's own pages, read
as they are first used), so its two rows are the same code.

    PYTHONPATH=src .venv/bin/python benchmarks/load_memory.py --dtypes bf16,fp32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_memory import peak_gib, resident_gib

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def single_file(path: Path) -> Path:
    """The random-weight SD 1.5 model as one fp32 .safetensors file, written once."""
    if not path.is_file():
        from reverie.models.ldm_layout import save_single_file
        from sd15_random import sd15_components

        save_single_file(sd15_components(), path, half=False)
    return path


def child(variant: str, path: Path, dtype_name: str) -> dict:
    import torch

    from reverie.models import single_file as loader

    if variant == "mapped":  # the whole file first, cast afterwards by diffusers, layer by layer
        loader.read_state_dict = lambda file, dtype=None, read=loader.read_state_dict: read(file)
    start = time.perf_counter()
    components = loader.load_single_file(path, dtype=getattr(torch, DTYPES[dtype_name]))
    seconds = time.perf_counter() - start
    assert components.unet.dtype == getattr(torch, DTYPES[dtype_name])
    return {"variant": variant, "dtype": dtype_name, "seconds": seconds, "after_gib": resident_gib(),
            "peak_gib": peak_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--file", type=Path, default=Path(tempfile.gettempdir()) / "reverie-sd15-random-seed0.safetensors")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.file, args.child[1])))
        return
    single_file(args.file)
    print(f"{args.file.name}: {args.file.stat().st_size / 2**30:.2f} GiB, fp32 weights")
    print("| loader | dtype | peak RSS GiB | RSS after GiB | s |")
    print("|---|---|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        for variant in ("mapped", "stream"):
            done = subprocess.run([sys.executable, __file__, "--file", str(args.file), "--child", variant, dtype],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {variant} | {dtype} | {row['peak_gib']:.2f} | {row['after_gib']:.2f} | {row['seconds']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
