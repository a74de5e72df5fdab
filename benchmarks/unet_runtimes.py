"""One SD 1.5 UNet evaluation on the CFG pair, in each CPU runtime, side by side.

Issue 22 names compiled CPU runtimes as a lever: OpenVINO, which reverie runs, and ONNX Runtime.
This measures them against torch on the same random-weight UNet (benchmarks/sd_speed.py's
folder, written once), one evaluation on the CFG pair: what a denoising step costs, without the
sampler, the text encoder and the decode.

Every runtime runs in its own process (its peak resident memory is its own, loading included),
the runtimes in turn, `--repeats` rounds; the median call is kept. Columns: s/call, warm; ratio
is torch fp32's median over the runtime's; setup s is what the process spent before its first
timed call (loading, exporting where the export was not cached, compiling the shape); the
output's difference from torch fp32's, as the relative RMS (the UNet's output is noise-sized).

    PYTHONPATH=src .venv/bin/python benchmarks/unet_runtimes.py --size 512 --repeats 2

Runtimes: torch (stock diffusers UNet, fp32, SDPA attention), torch_bf16, openvino and
openvino_bf16 (reverie's export, cached under $REVERIE_CACHE as a picture's is), onnxruntime
(the UNet exported by torch.onnx's exporter, cached beside the folder per size, run by ONNX
Runtime's CPU execution provider with every graph optimisation: it has no bf16 kernels on x86).
ONNX Runtime is not one of reverie's requirements; install it beside reverie's to measure it:
`.venv/bin/pip install -r benchmarks/requirements-onnx.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from process_memory import peak_gib

RUNTIMES = ("torch", "torch_bf16", "openvino", "openvino_bf16", "onnxruntime")


def inputs(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CFG pair's latents, a mid-schedule timestep and text states, the same in every process."""
    rng = np.random.default_rng(0)
    side = size // 8
    return (rng.standard_normal((2, 4, side, side), dtype=np.float32), np.array(500.0, np.float32),
            rng.standard_normal((2, 77, 768), dtype=np.float32))


def torch_unet(folder: Path, dtype_name: str):
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_grad_enabled(False)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    return UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype).eval()


def torch_call(folder: Path, size: int, dtype_name: str):
    import torch

    unet = torch_unet(folder, dtype_name)
    sample, timestep, states = (torch.from_numpy(x) for x in inputs(size))

    def call() -> np.ndarray:
        out = unet(sample.to(unet.dtype), timestep, encoder_hidden_states=states.to(unet.dtype)).sample
        return out.float().numpy()

    return call


def openvino_call(folder: Path, size: int, dtype_name: str):
    import torch

    from reverie.models.openvino_runtime import OpenVINOUNet

    unet = OpenVINOUNet.load(torch_unet(folder, dtype_name), source=str(folder))
    sample, timestep, states = (torch.from_numpy(x) for x in inputs(size))
    return lambda: unet(sample, timestep, states).sample.numpy()


def onnx_export(folder: Path, size: int) -> Path:
    """The UNet as ONNX for latents of this size (static shapes), written once beside the folder."""
    path = folder.with_name(f"{folder.name}-onnx") / f"unet-{size}.onnx"
    if path.is_file():
        return path
    import torch

    from reverie.models.openvino_runtime import TraceableUNet

    example = tuple(torch.from_numpy(x) for x in inputs(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="partial-", dir=path.parent))
    program = torch.onnx.export(TraceableUNet(torch_unet(folder, "fp32")).eval(), example, dynamo=True,
                                optimize=True, input_names=["sample", "timestep", "states"])
    program.save(str(partial / path.name), external_data=True)  # fp32 SD 1.5 is past protobuf's 2 GB
    for made in partial.iterdir():
        os.replace(made, path.parent / made.name)
    partial.rmdir()
    return path


def onnxruntime_call(folder: Path, size: int, threads: int):
    import onnxruntime

    path = onnx_export(folder, size)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = dict(zip(("sample", "timestep", "states"), inputs(size)))
    return lambda: session.run(None, feed)[0]


def child(args) -> dict:
    started = time.perf_counter()
    folder = Path(args.folder)
    runtime = args.child
    dtype = "bf16" if runtime.endswith("_bf16") else "fp32"
    if runtime.startswith("torch"):
        call = torch_call(folder, args.size, dtype)
    elif runtime.startswith("openvino"):
        call = openvino_call(folder, args.size, dtype)
    else:
        call = onnxruntime_call(folder, args.size, args.threads)
    out = call()  # the first call: OpenVINO compiles the shape, ONNX Runtime allocates its arena
    setup = time.perf_counter() - started
    times = []
    for _ in range(args.calls):
        began = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - began)
    np.save(args.output, out.astype(np.float32))
    peak = peak_gib() * 2**30
    return {"runtime": runtime, "s_per_call": float(np.median(times)), "setup_s": setup, "peak_bytes": peak}


def run_child(runtime: str, args, output: Path) -> dict:
    command = [sys.executable, __file__, "--child", runtime, "--folder", str(args.folder), "--size", str(args.size),
               "--calls", str(args.calls), "--threads", str(args.threads), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{runtime} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a.astype(np.float64) - b) ** 2).mean() / (b.astype(np.float64) ** 2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=3, help="timed calls a process makes after its first")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every runtime in turn")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--folder", help="the random-weight SD 1.5 folder (default: sd_speed.py's, made once)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    from sd_speed import sd15_folder

    args.folder = sd15_folder(Path(args.folder or Path(tempfile.gettempdir()) / "reverie-sd15-random-seed0-fp32"))
    runtimes = args.runtimes.split(",")
    assert runtimes[0] == "torch", "torch fp32 is the reference: list it first in --runtimes"
    work = Path(tempfile.mkdtemp(prefix="unet-runtimes-"))
    runs: dict[str, list[dict]] = {r: [] for r in runtimes}
    for round_ in range(args.repeats):
        for runtime in runtimes:
            runs[runtime].append(run_child(runtime, args, work / f"{runtime}-{round_}.npy"))
            print(f"round {round_ + 1}: {runtime} {runs[runtime][-1]['s_per_call']:.2f} s/call", file=sys.stderr)
    reference = np.load(work / "torch-0.npy")
    base = float(np.median([r["s_per_call"] for r in runs["torch"]]))
    print(f"SD 1.5 UNet on the CFG pair, {args.size} px, {args.threads} threads, median of "
          f"{args.repeats} x {args.calls} calls")
    print("| runtime | s/call | vs torch fp32 | setup s (first process) | peak RSS GiB | output vs torch fp32 (rel. RMS) |")
    print("|---|---:|---:|---:|---:|---:|")
    for runtime in runtimes:
        rows = runs[runtime]
        seconds = float(np.median([r["s_per_call"] for r in rows]))
        difference = relative_rms(np.load(work / f"{runtime}-0.npy"), reference)
        print(f"| {runtime} | {seconds:.2f} | {base / seconds:.2f}x | {rows[0]['setup_s']:.1f} | "
              f"{max(r['peak_bytes'] for r in rows) / 2**30:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
