"""The speck near the lower right of reverie-mini's pictures: how strong it is, under each decoder.

reverie-mini v0.8's decoder drew a small multicoloured speck near the lower right of nearly every
picture. It is the decoder's "droplet": one spot of huge activations at its last levels that
sets their GroupNorm statistics, which the last layer partly draws (training/autoencoder.py,
`droplet_penalty`). This compares autoencoders side by side on the same latents:

- generated: the denoiser's latents for a few prompts (seed 0, 20 steps, 128 px, no upscaler),
  made once and drawn by each decoder;
- round trip: flat discs drawn on white, read by each encoder and drawn by its decoder.

For each it prints the strongest pixel outlier (distance to the median of its 7x7 neighbours,
summed over RGB) in each quarter-side corner, as the median over pictures, and the droplet: the
strongest activation at the decoder's last level over its mean. With --figure it writes, per
decoder, the generated pictures and their lower-right quarters enlarged.

    .venv/bin/python benchmarks/speck.py --vae runs/mini-v08/vae --vae src/reverie/builtin/mini/vae --figure docs/speck-before-after.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

PROMPTS = ["red apple, Noto emoji", "grinning face, Twemoji", "orange heart, Noto emoji", "purple circle, Twemoji",
           "rocket, flat Fluent emoji", "car line icon"]
DISCS = [(221, 46, 68), (244, 144, 12), (120, 177, 89), (170, 142, 214), (85, 172, 238), (253, 203, 88)]
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def outliers(pictures: torch.Tensor, k: int = 7) -> torch.Tensor:
    """[N,3,H,W] in [0,1] -> [N,H,W]: each pixel's distance to the median of its k x k neighbours."""
    padded = F.pad(pictures, (k // 2,) * 4, mode="replicate")
    patches = padded.unfold(2, k, 1).unfold(3, k, 1)
    return (pictures - patches.reshape(*patches.shape[:4], -1).median(-1).values).abs().sum(1)


def corner_outliers(pictures: torch.Tensor) -> torch.Tensor:
    """[N,4]: the strongest outlier in each quarter-side corner (top left, top right, bottom left, bottom right)."""
    o = outliers(pictures)
    q = o.shape[-1] // 4
    return torch.stack([c.flatten(1).amax(1) for c in (o[:, :q, :q], o[:, :q, -q:], o[:, -q:, :q], o[:, -q:, -q:])], 1)


def discs(side: int, colours=DISCS) -> torch.Tensor:
    """Flat discs on white, [N,3,side,side] in [0,1]: the kind of art mini learned."""
    pictures = []
    for colour in colours:
        image = Image.new("RGB", (side, side), "white")
        ImageDraw.Draw(image).ellipse((side // 20, side // 20, side - side // 20, side - side // 20), fill=colour)
        pictures.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(pictures)


@torch.no_grad()
def draw(vae, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pictures in [0,1], the droplet ratio of each) for unscaled latents."""
    from reverie.training.autoencoder import droplet_ratio, upper_levels

    with upper_levels(vae.decoder, count=1) as levels:
        pictures = vae.decode(latents).sample
    return (pictures.clamp(-1, 1) + 1) / 2, droplet_ratio(levels[0])


@torch.no_grad()
def generated_latents(steps: int) -> torch.Tensor:
    """The denoiser's latents (unscaled) for PROMPTS at seed 0, mini's native size."""
    from reverie.methods.diffusion.batches import initial_noise
    from reverie.methods.diffusion.pipelines import pipeline_for
    from reverie.models.mini import NATIVE_SIDE, load_mini
    from reverie.prompts.conditioning import encode_prompt_pair
    from reverie.samplers import build_scheduler

    mini = load_mini()
    side = NATIVE_SIDE // mini.vae_scale_factor
    out = []
    for prompt in PROMPTS:
        cond, uncond = encode_prompt_pair(prompt, "", mini.tokenizer, mini.text_encoder, device=torch.device("cpu"))
        noise, generators = initial_noise([0], (mini.vae.config.latent_channels, side, side))
        pipe = pipeline_for(mini, "txt2img", build_scheduler("dpmpp_2m", mini.scheduler_config, [0]))
        latents = pipe(height=NATIVE_SIDE, width=NATIVE_SIDE, num_inference_steps=steps, latents=noise,
                       prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=4.0, generator=generators,
                       output_type="latent").images
        out.append(latents / mini.vae.config.scaling_factor)
    return torch.cat(out)


def marker_places(latents: torch.Tensor) -> list[tuple[int, int]]:
    """Where each latent stands out most from its 3x3 neighbourhood: (row, column) of 16x16."""
    deviation = (latents - F.avg_pool2d(latents, 3, 1, 1, count_include_pad=False)).norm(dim=1).flatten(1)
    side = latents.shape[-1]
    return [divmod(int(i), side) for i in deviation.argmax(1)]


def sheet_row(pictures: torch.Tensor, zoom: int = 2) -> Image.Image:
    """Each picture whole, then its lower-right quarter enlarged 2*zoom times, side by side."""
    side = pictures.shape[-1]
    tile = side * zoom
    row = Image.new("RGB", (2 * tile * len(pictures), tile), "white")
    for i, p in enumerate(pictures):
        image = Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))
        row.paste(image.resize((tile, tile), Image.LANCZOS), (2 * i * tile, 0))
        row.paste(image.crop((side // 2, side // 2, side, side)).resize((tile, tile), Image.NEAREST), ((2 * i + 1) * tile, 0))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, action="append", help="an autoencoder folder (repeat to compare; default: mini's)")
    parser.add_argument("--figure", type=Path, help="write each decoder's generated pictures and lower-right quarters here")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    from reverie.models.mini import MINI_DIR, NATIVE_SIDE

    torch.manual_seed(0)
    latents = generated_latents(args.steps)
    truth = discs(NATIVE_SIDE)
    print(f"the denoiser's latents stand out most at {marker_places(latents)} (row, column of 16x16)")
    rows, table = [], []
    for folder in args.vae or [MINI_DIR / "vae"]:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()
        made, made_ratio = draw(vae, latents)
        with torch.no_grad():
            encoded = vae.encode(truth * 2 - 1).latent_dist.mean
            trip, trip_ratio = draw(vae, encoded)
        print(f"{str(folder)[-40:]}: its encoder's latents of the discs stand out most at {marker_places(encoded)}")
        for kind, pictures, ratio in (("generated", made, made_ratio), ("discs", trip, trip_ratio)):
            corners = corner_outliers(pictures).median(0).values
            table.append(f"{str(folder)[-40:]:40s} {kind:10s}" + "".join(f"{v:13.3f}" for v in corners.tolist())
                         + f"{ratio.median():8.1f}x")
        rows.append((str(folder), made))
    print(f"strongest pixel outlier per quarter-side corner (median over {len(PROMPTS)} pictures); "
          "droplet: strongest / mean activation at the decoder's last level")
    print(f"{'autoencoder':40s} {'pictures':10s}" + "".join(f"{c:>13s}" for c in CORNERS) + f"{'droplet':>9s}")
    print("\n".join(table))
    if args.figure:
        strips = [(name, sheet_row(pictures)) for name, pictures in rows]
        width = max(strip.width for _, strip in strips)
        sheet = Image.new("RGB", (width, sum(strip.height + 18 for _, strip in strips)), "white")
        pen, y = ImageDraw.Draw(sheet), 0
        for name, strip in strips:
            pen.text((4, y + 3), f"{name}: each picture (128 px) and its lower-right quarter x4", fill="black")
            sheet.paste(strip, (0, y + 18))
            y += strip.height + 18
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.figure)
        print(args.figure)


if __name__ == "__main__":
    main()
