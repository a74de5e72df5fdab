"""In-between frames against the frames they stand for: blend, latent and optical-flow in-betweens.

Two reverie-mini videos of 17 frames are made: a camera move (zoom, turn and pan over one
picture, nothing repainted) and a walk (pictures that change into each other). Their even frames
are kept, one in-between frame is made between each pair by each method, and each is compared
with the odd frame the video really has there (PSNR in dB, mean over the 8 in-betweens, at the
128 px the frames are made at), with the time each method takes per in-between.

    PYTHONPATH=src OMP_NUM_THREADS=2 .venv/bin/python benchmarks/inbetweens.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reverie.methods.diffusion.run import diffusion_model
from reverie.methods.video.flow import inbetweens
from reverie.methods.video.motion import blend
from reverie.methods.video.run import latent_inbetweens
from reverie.studio import Studio

VIDEOS = {
    "camera move": dict(motion="animate", prompts=["0: a house with a tree"], zoom="0:(1.02)", angle="0:(1.5)",
                        translation_x="0:(10)", strength="0:(0)"),
    "walk": dict(motion="walk", prompts=["a red apple", "a green frog", "a yellow star"], seeds=[4, 11, 23]),
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


def main() -> None:
    studio = Studio(device="cpu")
    vae = diffusion_model(studio.models, "mini", torch.device("cpu"), torch.float32).vae
    methods = {"blend": lambda a, b: blend(a, b, 0.5), "latent": lambda a, b: latent_inbetweens(a, b, [0.5], vae)[0],
               "flow (DIS)": lambda a, b: inbetweens(a, b, [0.5])[0]}
    print("| video | " + " | ".join(f"{name}: PSNR dB | ms" for name in methods) + " |")
    print("|---|" + "---|---|" * len(methods))
    with tempfile.TemporaryDirectory() as scratch:
        for name, settings in VIDEOS.items():
            result = studio.video(**settings, frames=17, seed=4, steps=12, upscale=2, keep_frames=True,
                                  outdir=Path(scratch) / name.replace(" ", ""))
            frames = [Image.open(p).convert("RGB") for p in sorted((result.run_dir / "frames").glob("*.png"))]
            cells = []
            for make in methods.values():
                started = time.perf_counter()
                made = [make(frames[i], frames[i + 2]) for i in range(0, len(frames) - 2, 2)]
                seconds = (time.perf_counter() - started) / len(made)
                score = np.mean([psnr(picture, frames[i + 1]) for picture, i in zip(made, range(0, len(frames) - 2, 2))])
                cells.append(f"{score:.2f} | {seconds * 1000:.0f}")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
