"""Speed of reverie-mini on this machine (issue 22): four pictures from a prompt, warm and cold.

warm  `Studio.run` of 4 pictures (the defaults: 20 steps dpmpp_2m, CFG 4, drawn at 128 px and
      shown at 256 px by the built-in upscaler; and at 128 px with `upscale=1`) in one process,
      the models already loaded by a first request; median and best of --repeats.
cold  the whole command from the shell, `python -m reverie generate "red apple" -n 4`, in a
      fresh interpreter (imports, model loading, the pictures, the files), and the import of the
      command alone and `reverie --help` for reference; each with its peak resident memory.
      reverie-mini's plain requests run on its OpenVINO bundle without torch
      (methods/diffusion/compiled.py); `--runtime torch` runs them on the torch pipeline.

With `--before SRC` (a `src/` folder of an earlier reverie, e.g. from `git worktree add
/tmp/before <commit>`) every figure is also measured for that code, alternating run by run
with this one, so a busy machine slows both alike; the ratio is what to read.

    .venv/bin/python benchmarks/mini_speed.py --repeats 3
    .venv/bin/python benchmarks/mini_speed.py --repeats 3 --before /tmp/before/src
    .venv/bin/python benchmarks/mini_speed.py --repeats 3 --runtime torch   # the UNet on torch
    .venv/bin/python benchmarks/mini_speed.py --repeats 10 --runtimes torch,auto   # both in one process
    .venv/bin/python benchmarks/mini_speed.py --repeats 10 --runtimes auto,auto+int8   # and --quantize int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "src"
PROMPT = "red apple, Noto emoji"
COLD_COMMAND = ["-m", "reverie", "generate", "red apple", "-n", "4", "--seed", "1"]


def warm_worker(repeats: int, sizes: str, runtime: str) -> None:
    """In a fresh process: the warm timings of this process's reverie, as JSON on the last line."""
    from reverie.studio import Studio, make_request

    studio = Studio(device="cpu")
    outdir = tempfile.mkdtemp(prefix="mini-speed-")
    rows = {}
    # the model's default (shown at 256 px), then its own size
    for upscale in [{"256": None, "128": 1}[size] for size in sizes.split(",")]:
        times = []
        for i in range(repeats + 1):  # the first loads the models
            request = make_request(prompt=PROMPT, seed=i, n_samples=4, upscale=upscale, runtime=runtime)
            started = time.perf_counter()
            result = studio.run(request, outdir=outdir)
            times.append(time.perf_counter() - started)
        width, height = result.images[0].image.size
        rows[f"{width}x{height}"] = times[1:]
    import torch

    print(json.dumps({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}))


def runtimes_worker(repeats: int, runtimes: str) -> None:
    """In a fresh process: the default request (256 px) on each of `runtimes` in turn, request
    by request (the order reversed every other round), after one each that loads and compiles;
    the timings as JSON on the last line."""
    from reverie.studio import Studio, make_request

    studio = Studio(device="cpu")
    outdir = tempfile.mkdtemp(prefix="mini-speed-")
    names = runtimes.split(",")
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats + 1):
        for name in names if i % 2 else names[::-1]:
            runtime, _, quantize = name.partition("+")  # auto+int8: the UNet quantized (--quantize int8)
            request = make_request(prompt=PROMPT, seed=i, n_samples=4, runtime=runtime, quantize=quantize or "none")
            started = time.perf_counter()
            studio.run(request, outdir=outdir)
            if i:  # the first loads the models and compiles the shape
                times[name].append(time.perf_counter() - started)
    print(json.dumps({"runtimes": times}))


def in_python(src: Path, args: list[str], cwd: str | None = None) -> tuple[float, str, float]:
    """Run `python ARGS` with `src` first on the path; (wall seconds, stdout, peak resident GiB)."""
    env = os.environ | {"PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # its own rusage: ru_maxrss is this child's peak, in KiB
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{stderr[-2000:]}")
    return elapsed, stdout, usage.ru_maxrss / 2**20


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load} (at start), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs after the first, and cold runs, per code")
    parser.add_argument("--rounds", type=int, default=2, help="warm: processes per code, alternating")
    parser.add_argument("--before", type=Path, help="the src/ folder of the code to compare with")
    parser.add_argument("--sizes", default="256,128", help="warm: 256 (the default, x2 upscaled) and/or 128 (upscale 1)")
    parser.add_argument("--runtime", default="auto", help="the UNet's runtime: auto (OpenVINO for reverie-mini when installed), torch or openvino")
    parser.add_argument("--skip-warm", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--runtimes", help="instead: these runtimes (e.g. torch,auto) side by side in one process, "
                                           "request by request")
    parser.add_argument("--warm-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtimes-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_worker:
        warm_worker(args.repeats, args.sizes, args.runtime)
        return
    if args.runtimes_worker:
        runtimes_worker(args.repeats, args.runtimes)
        return
    if args.runtimes:
        print(f"machine: {machine()}")
        _, out, _ = in_python(HERE, [__file__, "--runtimes-worker", "--repeats", str(args.repeats), "--runtimes", args.runtimes])
        rows = json.loads(out.strip().splitlines()[-1])["runtimes"]
        print(f"\nwarm, one process: Studio.run, 4 pictures at 256 px (reverie-mini's defaults), the runtimes in turn, "
              f"{args.repeats} runs each after one that loads\n| runtime | median s | best s |\n|---|---:|---:|")
        for name, times in rows.items():
            print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} |")
        return

    sources = {"after": HERE} | ({"before": args.before.resolve()} if args.before else {})
    print(f"machine: {machine()}")
    warm: dict[str, dict[str, list[float]]] = {name: {} for name in sources}
    info = {}
    if not args.skip_warm:
        for _ in range(args.rounds):  # a process per code and round, alternating: a busy moment slows both
            for name, src in sources.items():
                _, out, _ = in_python(src, [__file__, "--warm-worker", "--repeats", str(args.repeats), "--sizes",
                                            args.sizes, "--runtime", args.runtime])
                info = json.loads(out.strip().splitlines()[-1])
                for size, times in info["rows"].items():
                    warm[name].setdefault(size, []).extend(times)
        print(f"\nwarm: Studio.run, 4 pictures, reverie-mini defaults (20 steps dpmpp_2m, CFG 4), "
              f"runtime {args.runtime}, torch {info['torch']}, {info['threads']} threads, {args.rounds} processes x {args.repeats} runs after a first that loads")
        print("| code | size | median s | best s |\n|---|---|---:|---:|")
        for size in warm["after"]:
            for name in sources:
                times = warm[name][size]
                print(f"| {name} | {size} | {statistics.median(times):.2f} | {min(times):.2f} |")
    if not args.skip_cold:
        cold = {name: {"import reverie.cli": [], "reverie --help": [], "generate": []} for name in sources}
        peaks: dict[str, dict[str, list[float]]] = {name: {what: [] for what in cold[name]} for name in sources}
        with tempfile.TemporaryDirectory(prefix="mini-cold-") as folder:
            for _ in range(args.repeats):
                for name, src in sources.items():  # alternating: a busy moment slows both
                    outdir = tempfile.mkdtemp(dir=folder)
                    for what, command in (("import reverie.cli", ["-c", "import reverie.cli"]),
                                          ("reverie --help", ["-m", "reverie", "--help"]),
                                          ("generate", [*COLD_COMMAND, "-o", outdir, "--runtime", args.runtime])):
                        seconds, _, peak = in_python(src, command, cwd=folder)
                        cold[name][what].append(seconds)
                        peaks[name][what].append(peak)
        print(f"\ncold: `python {' '.join(COLD_COMMAND[:3])} \"red apple\" -n 4 --seed 1 --runtime {args.runtime}` "
              "in a fresh interpreter, "
              f"{args.repeats} runs each, alternating; peak: the process's own peak resident memory")
        print("| code | what | median s | best s | peak GiB |\n|---|---|---:|---:|---:|")
        for what in cold["after"]:
            for name in sources:
                times = cold[name][what]
                print(f"| {name} | {what} | {statistics.median(times):.2f} | {min(times):.2f} | "
                      f"{max(peaks[name][what]):.2f} |")
    print("\ntargets (issue 22): warm 256x256 at most 1.0 s; cold generate at most 4 s")


if __name__ == "__main__":
    main()
