"""Speed of reverie-mini on this machine: four pictures from a prompt, end to end.

Cold start (import + load) is reported apart from warm runs (the same process, models loaded).

    .venv/bin/python benchmarks/mini_speed.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m")
    args = parser.parse_args()

    import torch

    from reverie.studio import make_request
    from reverie.studio import Studio

    studio = Studio(device="cpu")
    imported = time.perf_counter()
    rows = []
    for upscale in (None, 1):  # the model's default (shown at 256 px), then its own size
        times = []
        for i in range(args.repeats + 1):
            request = make_request(prompt="red apple, Noto emoji", seed=i, steps=args.steps, sampler=args.sampler,
                                   cfg_scale=4.0, n_samples=4, upscale=upscale)
            t = time.perf_counter()
            result = studio.generate(request)
            times.append(time.perf_counter() - t)
        first, warm = times[0], times[1:]
        size = result.images[0].image.size
        rows.append((f"{size[0]}x{size[1]}", first, statistics.median(warm), min(warm)))
    print(f"reverie-mini, 4 pictures, {args.steps} steps {args.sampler}, CFG 4, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"cold start: import {imported - started:.1f} s; first request (loads the models) below")
    print(f"{'size':<10} {'first s':>8} {'warm median s':>14} {'warm best s':>12}")
    for size, first, median, best in rows:
        print(f"{size:<10} {first:8.2f} {median:14.2f} {best:12.2f}")


if __name__ == "__main__":
    main()
