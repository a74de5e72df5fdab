"""Dynamic batching, the compute alone: N one-picture requests made one at a time (`Studio.run`
each) against the same N sharing passes (`Studio.run_shared`, up to `--limit` pictures a pass),
in one process, alternating, `--repeats` times; the median ratio is what batching buys on this
machine, without the servers around it (benchmarks/throughput.py measures those). Also checks
that the shared pictures are the alone ones, bit for bit. A third row makes the same requests one
at a time under runtime auto: where the torch-free path serves them (compiled.py: mini and SD
on the CPU) they never share passes, so `--runtime torch` is what measures sharing for them.

    .venv/bin/python benchmarks/batching.py --model mini --requests 8 --steps 8 --runtime torch
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--size", type=int, default=None, help="picture side (default: the model's own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime", default="auto", help="the requests' runtime (torch: shared passes for mini)")
    args = parser.parse_args()

    from reverie.studio import Studio

    studio = Studio(device="cpu")
    size = {"width": args.size, "height": args.size} if args.size else {}
    requests = [{"prompt": prompt, "seed": 1000 + number, "n_samples": 1, "model": args.model, "steps": args.steps,
                 "sampler": args.sampler, "upscale": 1, "runtime": args.runtime, **size}
                for number, prompt in enumerate(["red apple", "a blue car", "a cat face", "a house with a tree"]
                                                * (args.requests // 4 + 1))][:args.requests]
    keys = {studio.batch_key(request) for request in requests}
    if None in keys:
        parser.error("these requests run alone (the torch-free path serves them): pass --runtime torch")
    assert len(keys) == 1
    auto = [request | {"runtime": "auto"} for request in requests]
    studio.run(requests[0], grid=False)  # the model loaded and warm before anything is timed
    studio.run(auto[0], grid=False)

    alone_s, shared_s, auto_s, same = [], [], [], True
    for _ in range(args.repeats):
        started = time.perf_counter()
        for request in auto:
            studio.run(request, grid=False)
        auto_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        alone = [studio.run(request, grid=False) for request in requests]
        alone_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        shared = studio.run_shared([{"request": request, "grid": False} for request in requests], limit=args.limit)
        shared_s.append(time.perf_counter() - started)
        same = same and all(np.array_equal(np.asarray(a.images[0].image), np.asarray(b.images[0].image))
                            for a, b in zip(alone, shared))
    print(f"{args.model}, {args.requests} one-picture requests, {args.steps} steps {args.sampler}, pass limit "
          f"{args.limit}, torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"{os.cpu_count()} CPUs, {args.repeats} alternating repeats (median)")
    print(f"{'how':<22} {'seconds':>8} {'pictures/min':>12}")
    for name, times in (("one at a time", alone_s), (f"shared passes of {args.limit}", shared_s),
                        ("one at a time, auto", auto_s)):
        median = statistics.median(times)
        print(f"{name:<22} {median:>8.2f} {args.requests / median * 60:>12.1f}")
    ratios = [a / s for a, s in zip(alone_s, shared_s)]
    print(f"batched / one at a time: {statistics.median(ratios):.2f}x (each repeat: "
          + ", ".join(f"{ratio:.2f}" for ratio in ratios) + ")")
    print(f"shared pictures bit for bit the alone ones: {same}")


if __name__ == "__main__":
    main()
