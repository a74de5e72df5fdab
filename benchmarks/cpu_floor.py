"""How fast can an SD 1.5 UNet step be on this CPU? The arithmetic floor against stock diffusers.

Counts the floating-point operations of one UNet evaluation on the CFG pair (torch's
FlopCounterMode on meta tensors: no weights, no time), measures the best fp32 (and bf16) matrix
product rate this CPU reaches through torch (square products, the most favourable shape there
is), and measures stock diffusers' fp32 UNet evaluation at the same size. Floor = operations /
best rate: no kernel, runtime or compiler that computes the same operations in fp32 can be
faster. The last column is the most any same-picture fp32 lever can gain over stock diffusers.

    PYTHONPATH=src .venv/bin/python benchmarks/cpu_floor.py --sizes 256,512
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import torch


def unet_config() -> dict:
    root = resources.files("reverie.models") / "configs" / "sd1"
    return json.loads((root / "unet" / "config.json").read_text())


def unet_flops(side: int) -> int:
    """Operations of one SD 1.5 UNet evaluation on a CFG pair at `side` px (a multiply-add is 2)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config())
        sample, states = torch.randn(2, 4, side // 8, side // 8), torch.randn(2, 77, 768)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(sample, torch.tensor(500.0), states)
    return counter.get_total_flops()


def _best_rate(run, flops: float, seconds: float) -> float:
    """The best `flops`/s of `run()` over at least `seconds` (and at least two timed calls)."""
    run()
    best, until, calls = 0.0, time.perf_counter() + seconds, 0
    while time.perf_counter() < until or calls < 2:
        start = time.perf_counter()
        run()
        best, calls = max(best, flops / (time.perf_counter() - start)), calls + 1
    return best


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """torch's best operations per second of an n x n x n product in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return _best_rate(lambda: torch.mm(a, b), 2 * n**3, seconds)


def openvino_matmul_rate(n: int = 2048, seconds: float = 3.0) -> float | None:
    """OpenVINO's CPU plugin's best fp32 rate on the same product (its own JIT kernels), or None
    without the package: what a compiled runtime gets out of this CPU."""
    try:
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    left = ops.parameter([n, n], ov.Type.f32)
    right = ops.constant(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(left, right, False, False)], [left]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    request, data = compiled.create_infer_request(), np.ones((n, n), dtype=np.float32)
    return _best_rate(lambda: request.infer({0: data}), 2 * n**3, seconds)


def stock_step(side: int, repeats: int) -> float:
    """The best seconds of stock diffusers' fp32 UNet on a CFG pair at `side` px (random weights)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(unet_config()).eval().requires_grad_(False)
    sample, states = torch.randn(2, 4, side // 8, side // 8), torch.randn(2, 77, 768)
    times = []
    with torch.no_grad():
        unet(sample, torch.tensor(500.0), states)
        for _ in range(repeats):
            start = time.perf_counter()
            unet(sample, torch.tensor(500.0), states)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=2, help="stock UNet evaluations timed per size (best kept)")
    parser.add_argument("--no-stock", action="store_true", help="count and measure the rate only")
    args = parser.parse_args()

    rates = {"torch fp32": matmul_rate(torch.float32), "torch bf16": matmul_rate(torch.bfloat16, seconds=1.0),
             "openvino fp32": openvino_matmul_rate()}
    fp32 = max(rate for name, rate in rates.items() if rate and "fp32" in name)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best 2048^3 product: "
          + ", ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in rates.items() if rate)
          + f"; the floor uses the best fp32 rate ({fp32 / 1e9:.0f})\n")
    print("| size | UNet TFLOP (CFG pair) | fp32 floor s | stock diffusers s | most a same-picture fp32 lever can gain |")
    print("|---:|---:|---:|---:|---:|")
    for side in (int(s) for s in args.sizes.split(",")):
        flops = unet_flops(side)
        floor = flops / fp32
        stock = None if args.no_stock else stock_step(side, args.repeats)
        gain = f"{stock / floor:.2f}x" if stock else "-"
        print(f"| {side} | {flops / 1e12:.3f} | {floor:.2f} | {f'{stock:.2f}' if stock else '-'} | {gain} |", flush=True)


if __name__ == "__main__":
    main()
