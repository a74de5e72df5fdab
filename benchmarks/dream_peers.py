"""Dreaming side by side with the reference implementations people run (issue 22).

One table: seconds per dream iteration of reverie against lucidrains' big-sleep (BigGAN-deep +
CLIP ViT-B/32) and against nerdyrodent/VQGAN-CLIP's generate.py (VQGAN f16 1024 + ViT-B/32), at
the same size, cutouts, networks and optimizer (Adam, the peer's learning rate), plus reverie-mini's
own dream with its prior (reverie only).

The peers run their own code from their own virtual environment, which this script does not make:

    python3 -m venv /tmp/peers
    /tmp/peers/bin/pip install -r benchmarks/requirements-peers.txt
    # generate.py is not a package: a copy of the repository nerdyrodent/VQGAN-CLIP, anywhere
    git clone https://github.com/nerdyrodent/VQGAN-CLIP /tmp/vqgan-clip

    OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python benchmarks/dream_peers.py \\
        --peer-python /tmp/peers/bin/python --vqgan-clip /tmp/vqgan-clip --iterations 3 --rounds 2

All networks are random-weight files in the formats the peers read, written into a temp folder by
tests/checkpoint_layouts.py (speed does not depend on the weights); nothing is downloaded:

- big-sleep: `biggan-deep-N` resolves to the written BigGAN folder (its archive maps point at the
  local files) and ViT-B/32 to the written OpenAI TorchScript file (its CLIP `_download` returns
  that path). big-sleep is written for CUDA only (it asserts a GPU at import and calls `.cuda()`);
  on a CPU the child lets the assert pass and makes `.cuda()` a no-op, nothing else.
- generate.py: `-m` takes the CLIP file itself and `-conf`/`-ckpt` the taming VQGAN; its
  `from CLIP import clip` (a checkout of openai/CLIP beside it) is served by the PyPI package
  openai-clip, the same code. The VQGAN's YAML names taming's DummyLoss instead of the LPIPS
  discriminator loss: taming builds that loss at load time, which downloads VGG weights, and
  generate.py deletes the loss right after loading.

How each iteration is timed, warm-up iteration excluded, N timed (`--iterations`):
- reverie: `Dream.iterate()`, each call.
- big-sleep: `Imagine.train_step(epoch, i)`, its own iteration (loss, backward, Adam, EMA).
- generate.py: run as itself (runpy, `__main__`, patched sys.argv `-i N`); its loop ticks a tqdm
  bar once per iteration, so the child's tqdm records a time at each tick and when the bar closes
  after the last iteration. Iteration 0 (the warm-up) also saves a picture (`-se` is set past the
  end so that no timed iteration does).
Each implementation runs in a subprocess of its own; rounds alternate which side goes first. The
table gives the median over rounds of each round's mean s/iteration, and the median of the
per-round ratios (peer s / reverie s): on a shared machine the side-by-side ratio is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red apple"
# The peers' defaults: big-sleep's Imagine (lr, num_cutouts; its image_size 512 -> the 256 model
# here, as the row is BigGAN-deep-256) and generate.py's on a machine without a GPU (-s 256 256,
# -cuts 32, -opt Adam, -lr 0.1).
BIG_SLEEP = dict(size=256, cutouts=128, lr=0.07)
VQGAN_CLIP = dict(size=256, cutouts=32, lr=0.1)


# -- children: each runs in its own interpreter and writes its times to spec["out"] ---------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_steps(step, iterations: int, device: str) -> list[float]:
    step(0)  # warm-up
    times = []
    for i in range(1, iterations + 1):
        _sync(device)
        started = time.perf_counter()
        step(i)
        _sync(device)
        times.append(time.perf_counter() - started)
    return times


def child_reverie(spec: dict) -> list[float]:
    from reverie.methods.dreaming import start_dream

    dream = start_dream(spec["request"], device=spec["device"])
    return _time_steps(lambda i: dream.iterate(), spec["iterations"], spec["device"])


def child_big_sleep(spec: dict) -> list[float]:
    import functools

    import torch

    cpu = spec["device"] == "cpu"
    if cpu:  # big-sleep asserts a GPU at import and moves everything with .cuda(): let both pass
        available = torch.cuda.is_available
        torch.cuda.is_available = lambda: True
        torch.nn.Module.cuda = lambda self, device=None: self
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    import big_sleep.big_sleep as big_sleep
    import big_sleep.biggan as biggan
    import big_sleep.clip as clip

    if cpu:
        torch.cuda.is_available = available
    # Its CLIP loader fixed its default device at import; the weights are the local files.
    big_sleep.load = functools.partial(big_sleep.load, device=spec["device"])
    clip._download = lambda url, root=None: spec["clip"]
    name = f"biggan-deep-{spec['size']}"
    biggan.PRETRAINED_MODEL_ARCHIVE_MAP[name] = str(Path(spec["biggan"]) / "pytorch_model.bin")
    biggan.PRETRAINED_CONFIG_ARCHIVE_MAP[name] = str(Path(spec["biggan"]) / "config.json")
    imagine = big_sleep.Imagine(text=PROMPT, image_size=spec["size"], num_cutouts=spec["cutouts"], lr=spec["lr"],
                                save_every=10**9, open_folder=False, seed=0)
    if not cpu:
        imagine = imagine.to(spec["device"])
    return _time_steps(lambda i: imagine.train_step(0, i), spec["iterations"], spec["device"])


def child_vqgan_clip(spec: dict) -> list[float]:
    import runpy
    import types

    import clip
    import tqdm

    sys.modules["CLIP"] = types.ModuleType("CLIP")  # `from CLIP import clip`: see the docstring
    sys.modules["CLIP"].clip = clip
    ticks: list[float] = []
    device = spec["device"]

    class TickingBar(tqdm.tqdm):
        """generate.py's bar: ticks once after each iteration but the last, closes after that."""

        def update(self, n=1):
            _sync(device)
            ticks.append(time.perf_counter())
            return super().update(n)

        def close(self):
            if not getattr(self, "_ticked_close", False):
                self._ticked_close = True
                _sync(device)
                ticks.append(time.perf_counter())
            return super().close()

    tqdm.tqdm = TickingBar
    script = Path(spec["script"])
    work = Path(spec["work"])
    os.chdir(work)  # it writes output.png (and would look for taming-transformers/) in the current folder
    size = str(spec["size"])
    sys.argv = [str(script), "-p", PROMPT, "-s", size, size, "-cuts", str(spec["cutouts"]), "-opt", "Adam",
                "-lr", str(spec["lr"]), "-i", str(spec["iterations"]), "-se", str(10**9), "-sd", "0",
                "-m", spec["clip"], "-conf", spec["vqgan_config"], "-ckpt", spec["vqgan"],
                "-o", str(work / "output.png"), "-cd", "cpu" if device == "cpu" else device]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
    # ticks[0]: the end of iteration 0 (the warm-up); each later tick ends one timed iteration.
    return [b - a for a, b in zip(ticks, ticks[1:])]


CHILDREN = {"reverie": child_reverie, "big-sleep": child_big_sleep, "vqgan-clip": child_vqgan_clip}


# -- the parent ------------------------------------------------------------------------------------
def run_child(python: str, kind: str, spec: dict, log: Path) -> float | None:
    """Mean seconds per timed iteration, or None (the child's output is in `log`)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if kind == "reverie":
        env["PYTHONPATH"] = str(ROOT / "src")
    else:
        env.pop("PYTHONPATH", None)  # the peers' environment sees only its own packages
    out = log.with_suffix(".json")
    out.unlink(missing_ok=True)
    with log.open("w") as handle:
        done = subprocess.run([python, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec | {"out": str(out)})],
                              stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"  {kind} failed (exit {done.returncode}); last lines of {log}:\n    " + "\n    ".join(tail), file=sys.stderr)
        return None
    times = json.loads(out.read_text())
    print(f"  {kind}: {' '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr, flush=True)
    return statistics.fmean(times)


def build_files(work: Path, biggan_size: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import open_clip

    from checkpoint_layouts import IMAGENET_F16, openai_clip_model, write_biggan, write_openai_clip, write_taming_vqgan

    print(f"writing random-weight files in {work}", file=sys.stderr, flush=True)
    vit = write_openai_clip(work / "ViT-B-32.pt", openai_clip_model(open_clip.get_model_config("ViT-B-32")))
    vqgan = write_taming_vqgan(work / "vqgan", IMAGENET_F16, 1024, 256)
    # The same checkpoint with a YAML that generate.py's taming can load offline (see the docstring).
    peer_yaml = write_taming_vqgan(work / "vqgan-peer", IMAGENET_F16, 1024, 256, perceptual_loss=False).with_suffix(".yaml")
    biggan = write_biggan(work / "biggan", output_dim=biggan_size, channel_width=128)
    return dict(clip=str(vit), vqgan=str(vqgan), vqgan_peer_yaml=str(peer_yaml), biggan=str(biggan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--peer-python", help="python of the peers' virtual environment (big-sleep, taming, clip)")
    parser.add_argument("--vqgan-clip", help="nerdyrodent/VQGAN-CLIP's generate.py, or the folder holding it")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per run (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--biggan-size", type=int, default=BIG_SLEEP["size"], choices=(128, 256, 512))
    parser.add_argument("--biggan-cutouts", type=int, default=BIG_SLEEP["cutouts"])
    parser.add_argument("--vqgan-size", type=int, default=VQGAN_CLIP["size"])
    parser.add_argument("--vqgan-cutouts", type=int, default=VQGAN_CLIP["cutouts"])
    parser.add_argument("--loops", default="biggan,vqgan,mini", help="which rows, comma-separated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.spec)
        times = CHILDREN[args.child](spec)
        Path(spec["out"]).write_text(json.dumps(times))
        return

    import torch

    loops = args.loops.split(",")
    script = Path(args.vqgan_clip or "")
    script = script / "generate.py" if script.is_dir() else script
    if "vqgan" in loops and args.peer_python and not script.is_file():
        parser.error("--vqgan-clip: give generate.py, or the folder of a copy of nerdyrodent/VQGAN-CLIP")
    work = Path(tempfile.mkdtemp(prefix="dream-peers-"))
    files = build_files(work, args.biggan_size)
    common = dict(iterations=args.iterations, device=args.device)
    reverie_request = dict(prompt=PROMPT, seed=0, save_every=10**6, optimizer="adam", prior="none", guides=[files["clip"]])
    # (loop, network label, size, cutouts, guide, [(implementation, kind, spec), ...]); the peer first.
    rows = []
    if "biggan" in loops:
        size, cutouts, lr = args.biggan_size, args.biggan_cutouts, BIG_SLEEP["lr"]
        # big-sleep's cutouts get no flips or noise: reverie's augment off.
        request = reverie_request | dict(generator=f"biggan:{files['biggan']}", width=size, height=size,
                                         cutouts=cutouts, lr=lr, augment=False, truncation=1.0)
        sides = [("big-sleep " + _version(args.peer_python, "big-sleep"), "big-sleep",
                  common | dict(size=size, cutouts=cutouts, lr=lr, clip=files["clip"], biggan=files["biggan"])),
                 ("reverie", "reverie", common | dict(request=request))]
        rows.append((f"BigGAN-deep-{size} + ViT-B/32", size, cutouts, "ViT-B/32", sides))
    if "vqgan" in loops:
        size, cutouts, lr = args.vqgan_size, args.vqgan_cutouts, VQGAN_CLIP["lr"]
        # generate.py's cutouts get noise up to 0.1 (and kornia augments, which reverie has not).
        request = reverie_request | dict(generator=f"vqgan:{files['vqgan']}", width=size, height=size, cutouts=cutouts,
                                         lr=lr, augment=True, noise=0.1, cut_power=1.0)
        peer_work = work / "vqgan-clip-run"
        peer_work.mkdir()
        sides = [("VQGAN-CLIP generate.py", "vqgan-clip",
                  common | dict(size=size, cutouts=cutouts, lr=lr, clip=files["clip"], vqgan=files["vqgan"],
                                vqgan_config=files["vqgan_peer_yaml"], script=str(script.resolve()), work=str(peer_work))),
                 ("reverie", "reverie", common | dict(request=request))]
        rows.append(("VQGAN f16 1024 + ViT-B/32", size, cutouts, "ViT-B/32", sides))
    if "mini" in loops:
        request = dict(prompt=PROMPT, seed=0, save_every=10**6)  # mini generator, mini guide, mini prior: the defaults
        from reverie.methods.dreaming import DreamRequest

        built = DreamRequest.build(**request)
        rows.append(("reverie-mini + its prior", built.width, built.cutouts, "built-in CLIP",
                     [("reverie", "reverie", common | dict(request=request))]))

    times: dict[tuple[int, int], list[float | None]] = {}
    for round_ in range(args.rounds):
        for r, (loop, *_, sides) in enumerate(rows):
            order = list(enumerate(sides))
            if round_ % 2:
                order.reverse()  # alternate which side goes first
            for s, (name, kind, spec) in order:
                if kind != "reverie" and not args.peer_python:
                    continue
                print(f"round {round_ + 1}: {loop}: {name}", file=sys.stderr, flush=True)
                python = sys.executable if kind == "reverie" else args.peer_python
                log = work / f"{r}-{s}-{round_}.log"
                times.setdefault((r, s), []).append(run_child(python, kind, spec, log))

    print(f"\nDreaming, {args.iterations} timed iterations after a warm-up, median of {args.rounds} alternating rounds, "
          f"device {args.device}, torch {torch.__version__}, {os.environ.get('OMP_NUM_THREADS', 'default')} threads\n")
    print("| loop | implementation | size | cutouts | guide | s/iteration | iterations/s | ratio (peer s / reverie s) |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for r, (loop, size, cutouts, guide, sides) in enumerate(rows):
        reverie_times = times.get((r, len(sides) - 1), [])
        for s, (name, kind, _) in enumerate(sides):
            measured = [t for t in times.get((r, s), []) if t is not None]
            if not measured:
                print(f"| {loop} | {name} | {size}x{size} | {cutouts} | {guide} | failed or not run | | |")
                continue
            seconds = statistics.median(measured)
            ratio = ""
            if kind != "reverie":
                pairs = [p / q for p, q in zip(times[(r, s)], reverie_times) if p is not None and q is not None]
                ratio = f"{statistics.median(pairs):.2f}" if pairs else ""
            print(f"| {loop} | {name} | {size}x{size} | {cutouts} | {guide} | {seconds:.2f} | {1 / seconds:.3f} | {ratio} |")
    print(f"\n(logs in {work})", file=sys.stderr)


def _version(python: str | None, package: str) -> str:
    if not python:
        return ""
    try:
        return subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    main()
