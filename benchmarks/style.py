"""Style transfer: which feature network to ship, measured; and the fast network's speed.

For each candidate feature network, every content picture (hires-128 test pictures: the tests
never use them) is restyled after every procedural painting (benchmarks/style_pictures.py) by
the optimisation, and the result is measured in networks it was NOT optimised with:

- style distance: mean over layers of ||G(result) - G(style)|| / ||G(style)|| (Gram matrices),
  in the small CLIP's judge and in a seeded random-weight VGG-16; beside it the content
  picture's own distance to the style (what "no transfer" scores). Lower is more style.
- content: SSIM of the luminance, and the correlation of edge strength (Sobel), to the content.
- seconds per picture.

Then the fast network's milliseconds per 256 px picture, and a grid (content x style) by the
shipped default to docs/style-grid.png.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/style.py                       # the table + grid
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/style.py --candidates random,clip --steps 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from style_pictures import STYLES  # noqa: E402

CONTENTS = ["fluent/1f302_closed-umbrella.png", "fluent/1f3ef_japanese-castle.png", "fluent/1f402_ox.png",
            "tabler/building-hospital.png"]


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of the luminance, 7x7 Gaussian windows (sigma 1.5)."""
    x, y = luminance(a), luminance(b)
    g = torch.exp(-(torch.arange(7) - 3.0) ** 2 / (2 * 1.5 ** 2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, 7, 7)
    blur = lambda t: F.conv2d(t, window)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float(((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean())


def edge_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the Sobel edge strength of two pictures' luminance."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    edges = [torch.sqrt(F.conv2d(luminance(p), kx) ** 2 + F.conv2d(luminance(p), kx.transpose(2, 3)) ** 2 + 1e-12).flatten()
             for p in (a, b)]
    return float(torch.corrcoef(torch.stack(edges))[0, 1])


def measures():
    """{name: FeatureNetwork} that score the results: the CLIP judge, and a random VGG-16."""
    from reverie.models.style_features import FeatureNetwork, IMAGENET_MEAN, IMAGENET_STD, VGG_LAYERS, load_clip_features, vgg_body
    from reverie.models.mini_clip import WEIGHTS

    torch.manual_seed(12345)
    vgg = FeatureNetwork(vgg_body("vgg16"), VGG_LAYERS["vgg16"]["style"], VGG_LAYERS["vgg16"]["content"],
                         IMAGENET_MEAN, IMAGENET_STD, "vgg16-random")
    judge = load_clip_features(WEIGHTS)
    judge.colour_layer = False  # the judge measures with its own layers only (the colour layer is the candidate's)
    return {"judge": judge, "vgg16r": vgg}


def candidate(name: str):
    from reverie.models.style_features import FeatureNetwork, IMAGENET_MEAN, IMAGENET_STD, VGG_LAYERS, load_features, vgg_body

    if name == "vgg19r":  # torchvision's VGG-19 with seeded random weights: the architecture, untrained
        torch.manual_seed(777)
        return FeatureNetwork(vgg_body("vgg19"), VGG_LAYERS["vgg19"]["style"], VGG_LAYERS["vgg19"]["content"],
                              IMAGENET_MEAN, IMAGENET_STD, "vgg19r")
    return load_features(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/build/hires-128/test")
    parser.add_argument("--candidates", default="random,clip,vgg19r")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--contents", type=int, default=3)
    parser.add_argument("--strength", type=float, default=None, help="default: the request's")
    parser.add_argument("--grid", default="docs/style-grid.png")
    parser.add_argument("--grid-features", default="builtin", help="whose results the grid shows (a candidate), or each: one grid per candidate")
    parser.add_argument("--network", default=None, help="a trained style network folder to time (default: an untrained one)")
    args = parser.parse_args()

    from reverie.methods.style.request import StyleRequest
    from reverie.methods.style.transfer import StyleTransfer
    from reverie.models.cache import ModelCache
    from reverie.models.style_features import grams, gram_distance
    from reverie.outputs.grid import make_grid
    from reverie.pixels import to_tensor

    torch.set_grad_enabled(True)
    contents = [str(Path(args.data) / c) for c in CONTENTS[: args.contents]]
    styles = {name: draw(args.size) for name, draw in STYLES.items()}
    judges = measures()
    strength = {} if args.strength is None else {"strength": args.strength}
    models = ModelCache()
    print(f"{len(contents)} contents x {len(styles)} styles, {args.size} px, {args.steps} L-BFGS steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    header = (f"{'features':<10} {'judge: result':>14} {'content':>8} {'vgg16r: result':>15} {'content':>8} "
              f"{'SSIM':>6} {'edges r':>8} {'s/picture':>10}")
    print(header)
    print("-" * len(header))
    results = {}
    for name in args.candidates.split(","):
        network = candidate(name)
        rows = []
        for content in contents:
            for style_name, style in styles.items():
                request = StyleRequest.build(content_image=content, style_images=[style], size=args.size, steps=args.steps,
                                             seed=0, **strength)
                started = time.perf_counter()
                transfer = StyleTransfer(request, "cpu", models, network=network)
                for _ in range(args.steps):
                    transfer.iterate()
                seconds = time.perf_counter() - started
                result, original, style_pixels = transfer.result_pixels(), transfer.content, to_tensor(style)
                with torch.no_grad():
                    row = [seconds, ssim(result, original), edge_correlation(result, original)]
                    for judge in judges.values():
                        target = grams(judge, style_pixels)
                        row += [float(gram_distance(grams(judge, result), target)), float(gram_distance(grams(judge, original), target))]
                rows.append(row)
                results[(name, content, style_name)] = transfer.picture()
        mean = torch.tensor(rows).mean(0).tolist()
        seconds, s, e, jr, jc, vr, vc = mean
        print(f"{name:<10} {jr:>14.3f} {jc:>8.3f} {vr:>15.3f} {vc:>8.3f} {s:>6.3f} {e:>8.3f} {seconds:>10.1f}")
    print("(style distances: lower is closer to the style picture; 'content' is the untouched content picture's)")
    _fast_speed(args.network)
    names = args.candidates.split(",") if args.grid_features == "each" else [_grid_features(args.grid_features)]
    for grid_name in names if args.grid else []:
        from PIL import Image

        blank = Image.new("RGB", (args.size, args.size), "white")
        cells = [blank, *styles.values()]
        for content in contents:
            cells.append(Image.open(content).convert("RGB").resize((args.size, args.size)))
            cells += [results[(grid_name, content, s)] for s in styles]
        path = Path(args.grid)
        path = path.with_name(f"{path.stem}-{grid_name}{path.suffix}") if args.grid_features == "each" else path
        make_grid(cells, columns=len(styles) + 1).save(path)
        print(f"grid ({grid_name} features): {path}")


def _grid_features(wanted: str) -> str:
    from reverie.models.style_feature_names import BUILTIN

    return BUILTIN if wanted == "builtin" else wanted


def _fast_speed(network_folder: str | None) -> None:
    from reverie.models.style_network import StyleNetwork, load_style_network

    network = load_style_network(network_folder) if network_folder else StyleNetwork().eval()
    pixels = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        network(pixels)  # warm up
        times = []
        for _ in range(5):
            started = time.perf_counter()
            network(pixels)
            times.append(time.perf_counter() - started)
    params = sum(p.numel() for p in network.parameters())
    print(f"fast style network ({params / 1e3:.0f}k parameters): {1000 * sorted(times)[2]:.0f} ms per 256x256 picture "
          f"(median of 5, {torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
