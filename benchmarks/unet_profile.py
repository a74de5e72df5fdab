"""Where an SD UNet evaluation's time goes in OpenVINO's CPU plugin: time by kind of node.

Compiles a bundle's UNet IR (models/sd_bundle.py; the one `sd_speed.py` makes, under the reverie
cache's `openvino/sd-*/unet.xml`) as reverie does in bf16 (its sinusoids in f32), for one
picture on one thread, which is what each of the CFG pair's two streams runs, and prints
OpenVINO's own per-node timings summed by node kind, and the rate that makes of the UNet's
operations (benchmarks/cpu_floor.py counts them).

    PYTHONPATH=src .venv/bin/python benchmarks/unet_profile.py ~/.cache/reverie/openvino/sd-.../unet.xml --size 512
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import openvino as ov

    from reverie.models.openvino_bundle import sinusoids_in_f32

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ir", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--tflop", type=float, default=0.8035, help="the UNet's operations for one picture at --size "
                        "(cpu_floor.py's CFG pair halved; 0.8035 at 512 px)")
    args = parser.parse_args()
    core = ov.Core()
    model = sinusoids_in_f32(core.read_model(str(args.ir)))
    side = args.size // 8
    feed = {"sample": np.random.default_rng(0).standard_normal((1, 4, side, side), dtype=np.float32),
            "timestep": np.array(500.0, np.float32),
            "encoder_hidden_states": np.random.default_rng(1).standard_normal((1, 77, 768), dtype=np.float32)}
    model.reshape({port.get_any_name(): ov.PartialShape(list(feed[port.get_any_name()].shape)) for port in model.inputs})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feed)
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        request.infer(feed)
        times.append(time.perf_counter() - start)
    call = float(np.median(times))
    by_kind, count = collections.Counter(), collections.Counter()
    for node in request.profiling_info:  # the last call's
        kind = f"{node.node_type} ({node.exec_type.split('_')[0]})"
        by_kind[kind] += node.real_time.total_seconds()
        count[kind] += 1
    total = sum(by_kind.values())
    print(f"{args.ir}, {args.size} px, one picture, bf16, {args.threads} thread(s): {call:.2f} s a call (median of "
          f"{args.calls}), {args.tflop / call * 1e3:.0f} GFLOP/s over the UNet's {args.tflop} TFLOP")
    print("| node kind (implementation) | nodes | s | share |")
    print("|---|---:|---:|---:|")
    for kind, seconds in by_kind.most_common():
        if seconds >= 0.001:
            print(f"| {kind} | {count[kind]} | {seconds:.3f} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
