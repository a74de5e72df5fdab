"""Videos on reverie-mini: how fast each motion makes frames on this CPU, and how smooth it is.

Smoothness is a number: the mean absolute difference between consecutive frames (levels of 255,
at the size the frames were made) and its largest jump, for the video and for the same frames
made independently (each frame's own prompt and seed as a txt2img picture: what a video without
interpolation or feedback would show; for a restyle, the frames of its input, the walk). A
restyle's temporal consistency is its warping error: the mean absolute difference between a frame
and the frame before carried along the input's optical flow (DIS), which flicker raises and motion
does not. A contact sheet of each video (every other frame, as shown) goes to --sheets.

    PYTHONPATH=src OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video.py --sheets docs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reverie.methods.video.flow import backward_flow, carried
from reverie.outputs.grid import make_grid
from reverie.outputs.video import read_frames
from reverie.studio import Studio

SEED = 4
RANDOM_NETWORK = "random style network"  # made in the scratch folder (benchmark's own)
VIDEOS = {
    "walk": dict(motion="walk", prompts=["a red apple", "a green frog", "a yellow star"], seeds=[4, 11, 23]),
    "animate": dict(motion="animate", prompts=["0: a house with a tree | 10: a castle on a hill"], zoom="0:(1.04)",
                    angle="0:(1.5)"),
    "animate cadence 3": dict(motion="animate", prompts=["0: a house with a tree | 10: a castle on a hill"],
                               zoom="0:(1.04)", angle="0:(1.5)", strength="0:(0.55)", cadence=3),
    # A camera moving over one picture (nothing repainted), then that video painted again: one seed,
    # Deforum's seed per frame, coherence with and without the optical flow (run "camera move" first).
    "camera move": dict(motion="animate", prompts=["0: a house with a tree"], zoom="0:(1.02)", angle="0:(1.5)",
                        translation_x="0:(10)", strength="0:(0)"),
    "restyle": dict(motion="restyle", prompts=["0: a blue ice cube"], strength="0:(0.5)", input="camera move"),
    "restyle seed iter": dict(motion="restyle", prompts=["0: a blue ice cube"], strength="0:(0.5)",
                              seed_behavior="iter", input="camera move"),
    "restyle coherence 0.5": dict(motion="restyle", prompts=["0: a blue ice cube"], strength="0:(0.5)",
                                  coherence="0:(0.5)", input="camera move"),
    "restyle coherence 0.5 no flow": dict(motion="restyle", prompts=["0: a blue ice cube"], strength="0:(0.5)",
                                          coherence="0:(0.5)", flow="none", input="camera move"),
    # A style network of `reverie train style`'s default shape, its weights random: its speed, and
    # what coherence along the flow does to an output that changes every frame.
    "restyle style network": dict(motion="restyle", network=RANDOM_NETWORK, input="camera move"),
    "restyle style network coherence 0.5": dict(motion="restyle", network=RANDOM_NETWORK, coherence="0:(0.5)",
                                                input="camera move"),
    "dream": dict(motion="dream", prompts=["0: a red apple | 10: a green frog"], zoom="0:(1.03)", angle="0:(1)",
                  iterations_per_frame=8, first_iterations=60, dream={"cutouts": 16}),
}


def differences(frames: list[Image.Image]) -> list[float]:
    return differences_between(frames, frames[1:])


def random_network(folder: Path) -> Path:
    import torch

    from reverie.models.style_network import StyleNetwork, StyleNetworkConfig, save_style_network

    torch.manual_seed(SEED)
    return save_style_network(StyleNetwork(StyleNetworkConfig()), folder)


def warping_errors(frames: list[Image.Image], inputs: list[Image.Image]) -> list[float]:
    """Each frame against the one before carried along the input's flow (levels of 255)."""
    inputs = [picture.resize(frames[0].size, Image.LANCZOS) for picture in inputs]
    carried_before = [carried(a, backward_flow(x, y, "dis")) for a, x, y in zip(frames, inputs, inputs[1:])]
    return differences_between(frames[1:], carried_before)


def differences_between(first: list[Image.Image], second: list[Image.Image]) -> list[float]:
    return [float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())
            for a, b in zip(first, second)]


def made_frames(result) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted((result.run_dir / "frames").glob("*.png"))]


def independent_frames(studio: Studio, records: list[dict], steps: int) -> list[Image.Image]:
    """Each frame's own prompt made alone as a txt2img picture, each from a seed of its own."""
    return [studio.generate({"prompt": record["prompt"], "seed": SEED + 1000 + i, "n_samples": 1, "steps": steps,
                             "upscale": 1}).images[0].image for i, record in enumerate(records)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", default=",".join(VIDEOS), help="comma-separated names of VIDEOS")
    parser.add_argument("--sheets", type=Path, default=None, help="folder for a contact sheet per video")
    args = parser.parse_args()
    studio = Studio(device="cpu")
    studio.generate({"prompt": "warm-up", "n_samples": 1, "steps": 2, "upscale": 1})
    rows, made, warped = [], {}, []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only.split(","):
            settings = dict(VIDEOS[name])
            source = settings.pop("input", None)
            if source is not None:
                if source not in made:
                    parser.error(f"{name} paints the {source} video again: put {source} before it in --only")
                settings["video_input"] = str(made[source].videos[0])
            if settings.get("network") == RANDOM_NETWORK:
                settings["network"] = str(random_network(Path(scratch) / "network"))
            extra = {} if settings["motion"] == "dream" or settings.get("network") else {"steps": args.steps, "upscale": 2}
            started = time.perf_counter()
            result = studio.video(**settings, frames=args.frames, seed=SEED, keep_frames=True,
                                  outdir=Path(scratch) / name.replace(" ", ""), **extra)
            seconds = time.perf_counter() - started
            frames = made_frames(result)
            video = differences(frames)
            made[name] = result
            records = json.loads((result.run_dir / "video.json").read_text())["frames"]
            if source is not None:
                alone = differences(made_frames(made[source]))  # the input's own, at the size it was made
                inputs = made_frames(made[source])
                warped.append((name, np.mean(warping_errors(frames, inputs)), np.mean(warping_errors(inputs, inputs))))
            elif settings["motion"] != "dream":
                alone = differences(independent_frames(studio, records, args.steps))
            else:
                alone = []
            rows.append((name, len(frames), seconds, video, alone))
            if args.sheets:
                shown = read_frames(result.videos[0])[::2]  # as the video shows them
                sheet = make_grid(shown, columns=min(len(shown), 8))
                args.sheets.mkdir(parents=True, exist_ok=True)
                sheet.save(args.sheets / f"video-{name.replace(' ', '-')}.png")
    print(f"{args.frames} frames each, reverie-mini, {args.steps} steps (diffusion), 128 px frames")
    print("| video | frames/s | frame-to-frame mean | largest jump | independent frames: mean | largest jump |")
    print("|---|---|---|---|---|---|")
    for name, count, seconds, video, alone in rows:
        independent = f"{np.mean(alone):.1f} | {max(alone):.1f}" if alone else "– | –"
        print(f"| {name} | {count / seconds:.2f} | {np.mean(video):.1f} | {max(video):.1f} | {independent} |")
    if warped:
        print("\n| restyle | warping error (mean) | the input's own |\n|---|---|---|")
        for name, error, own in warped:
            print(f"| {name} | {error:.1f} | {own:.1f} |")


if __name__ == "__main__":
    main()
