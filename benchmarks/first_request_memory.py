"""The memory a model's first request takes on each runtime: what `auto`'s free-memory rule
(AUTO_MEMORY_FACTOR in models/openvino_runtime.py) has to cover.

Each runtime runs in a fresh process with an empty REVERIE_CACHE: it loads SD 1.5's
architecture (random weights, the fp32 folder benchmarks/sd_speed.py writes), then makes one
picture; for openvino that first request exports the UNet, compiles the shape and runs it.
Columns: the process's peak resident memory, what stays resident after, and the peak above
torch's in units of the UNet's own bytes.

    PYTHONPATH=src .venv/bin/python benchmarks/first_request_memory.py --size 512 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from process_memory import peak_gib, resident_gib


def child(args) -> dict:
    import torch

    from reverie.studio import Studio, make_request

    studio = Studio(device="cpu")
    request = make_request(prompt="a red apple", model=args.folder, width=args.size, height=args.size,
                           steps=args.steps, seed=1, dtype="fp32", runtime=args.child, upscale=1)
    studio.run(request, outdir=tempfile.mkdtemp(prefix="first-request-"), grid=False)
    return {"runtime": args.child, "peak_gib": peak_gib(),
            "after_gib": resident_gib(), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--folder", help="the random-weight SD 1.5 folder (default: sd_speed.py's, written once)")
    parser.add_argument("--child", choices=("torch", "openvino"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from sd_speed import sd15_folder

    args.folder = args.folder or str(Path(tempfile.gettempdir()) / "reverie-sd15-random-seed0-fp32")
    sd15_folder(Path(args.folder))
    unet_gib = sum(f.stat().st_size for f in (Path(args.folder) / "unet").glob("*.safetensors")) / 2**30
    results = {}
    for runtime in ("torch", "openvino"):
        env = os.environ | {"REVERIE_CACHE": tempfile.mkdtemp(prefix="first-request-cache-")}
        done = subprocess.run([sys.executable, __file__, "--child", runtime, "--folder", args.folder, "--size",
                               str(args.size), "--steps", str(args.steps)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{runtime} failed:\n{done.stderr[-3000:]}")
        results[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nSD 1.5 architecture (random weights, fp32), {args.size} px, {args.steps} steps, a fresh process each, "
          f"UNet {unet_gib:.2f} GiB")
    print("| runtime | peak GiB | after GiB | peak above torch's, in UNet bytes |")
    print("|---|---:|---:|---:|")
    for runtime, result in results.items():
        above = (result["peak_gib"] - results["torch"]["peak_gib"]) / unet_gib
        print(f"| {runtime} | {result['peak_gib']:.2f} | {result['after_gib']:.2f} | {above:.2f} |")


if __name__ == "__main__":
    main()
