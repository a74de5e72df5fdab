"""The generative trilemma on our own data: a trained GAN against reverie-mini.

Quality and diversity are measured on the held-out pictures (the test split: concepts neither
model saw) in the built-in CLIP judge's image features: KID (unbiased MMD^2 with the cubic
polynomial kernel, mean and standard deviation over random subsets), precision and recall
(Kynkaenniemi et al. 2019, k-NN manifolds, k=3) and density and coverage (Naeem et al. 2020,
k=5). Speed is milliseconds per picture, both models run side by side in this process on the
same number of threads, each through the studio as a user runs it (one picture per request
for mini: a different prompt each; the GAN draws every picture alone, its seeds' way).

The GAN draws each picture in the class (art source) of a test picture, so its classes follow
the test split's; mini gets each test picture's own caption ("<label>, <style>"), which also
tells it the concept: mini is given more than the GAN. A row of real training pictures scored
against the test pictures the same way is the floor the models are measured against. FID is
computed only when an Inception-v3 state dict is given (`--inception`, torchvision's layout).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gan_vs_mini.py --gan runs/gan-mini64 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


# -- metrics on feature rows ------------------------------------------------------------------
def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (the KID kernel)."""
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, size: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std of the unbiased MMD^2 over `subsets` random subsets of `size` of each."""
    rng = np.random.default_rng(seed)
    size = min(size, len(real), len(fake))
    values = [polynomial_mmd(real[rng.choice(len(real), size, replace=False)], fake[rng.choice(len(fake), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T, 0))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row."""
    return np.sort(_distances(x, x), axis=1)[:, k]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Share of fakes inside the real k-NN manifold, and of reals inside the fake one."""
    real_r, fake_r = _radii(real, k), _radii(fake, k)
    cross = _distances(real, fake)
    precision = (cross <= real_r[:, None]).any(axis=0).mean()
    recall = (cross <= fake_r[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Density: how many real neighbourhoods hold each fake, over k; coverage: share of real
    neighbourhoods that hold at least one fake."""
    real_r = _radii(real, k)
    inside = _distances(real, fake) <= real_r[:, None]
    return float(inside.sum(axis=0).mean() / k), float(inside.any(axis=1).mean())


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root.real))


# -- features ---------------------------------------------------------------------------------
def judge_features(judge, pictures: torch.Tensor) -> np.ndarray:
    """uint8 [N, 3, H, W] -> the judge's unit image vectors (it sees 64 px)."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(pictures), 128):
            rows.append(judge.encode_images(pictures[start:start + 128].float() / 127.5 - 1))
    return torch.cat(rows).numpy().astype(np.float64)


def inception_features(path: Path, pictures: torch.Tensor) -> np.ndarray:
    """Pool features of torchvision's Inception-v3 with the state dict at `path` (read without running code)."""
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rows = []
    with torch.no_grad():
        for start in range(0, len(pictures), 32):
            x = F.interpolate(pictures[start:start + 32].float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
            rows.append(model((x - mean) / std))
    return torch.cat(rows).numpy().astype(np.float64)


def as_uint8(images) -> torch.Tensor:
    """PIL pictures -> uint8 [N, 3, 64, 64] (the size the data and the judge have)."""
    from PIL import Image

    arrays = [np.asarray(image.convert("RGB").resize((64, 64), Image.LANCZOS)) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# -- the two models ---------------------------------------------------------------------------
def gan_pictures(studio, gan: str, classes: list[str], seed: int) -> tuple[list, float]:
    """One picture per entry of `classes` (a class name each), seeds seed, seed+1, ...; (pictures, seconds)."""
    pictures, started = [], time.perf_counter()
    for i, name in enumerate(classes):
        fields = {"mode": "gan", "model": gan, "n_samples": 1, "seed": seed + i, "device": "cpu"}
        if name:
            fields["class_name"] = name
        pictures.append(studio.run(fields).images[0].image)
    return pictures, time.perf_counter() - started


def mini_pictures(studio, prompts: list[str], seed: int) -> tuple[list, float]:
    pictures, started = [], time.perf_counter()
    for i, prompt in enumerate(prompts):
        result = studio.run({"mode": "txt2img", "prompt": prompt, "model": "mini", "n_samples": 1, "seed": seed + i,
                             "upscale": 1, "device": "cpu", "dtype": "fp32"})
        pictures.append(result.images[0].image)
    return pictures, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan", default="runs/gan-mini64", help="gan:NAME, a GAN folder or a training run folder")
    parser.add_argument("--data", type=Path, default=Path("data/build/mini-64"))
    parser.add_argument("--gan-pictures", type=int, default=500)
    parser.add_argument("--mini-pictures", type=int, default=200)
    parser.add_argument("--reals", type=int, default=500, help="training pictures for the real-against-real floor")
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--subset-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception", type=Path, default=None, help="torchvision Inception-v3 state dict for FID")
    parser.add_argument("--grid", type=Path, default=None, help="also save a grid of GAN pictures (8 seeds per class)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from reverie.models.gan import load_gan
    from reverie.models.gan_folders import resolve_gan
    from reverie.models.mini_clip import load_clip
    from reverie.studio import Studio
    from reverie.training.data.folder import read_splits

    gan = args.gan if args.gan.startswith("gan:") else f"gan:{args.gan}"
    folder = resolve_gan(gan)
    network = load_gan(folder)
    splits = read_splits(args.data, 64)
    test, train = splits.test, splits.train
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(test))
    sources = [test.top_folder(int(i)) for i in order]
    captions = [test.captions[int(i)][0] for i in order]
    classes = [s if s in network.classes else "" for s in sources]
    gan_classes = [classes[i % len(classes)] for i in range(args.gan_pictures)]
    mini_prompts = [captions[i % len(captions)] for i in range(args.mini_pictures)]

    studio = Studio(device="cpu")
    gan_pictures(studio, gan, gan_classes[:2], 10_000)  # load and warm up, untimed
    mini_pictures(studio, mini_prompts[:1], 10_000)
    fakes_gan, gan_s = gan_pictures(studio, gan, gan_classes, args.seed)
    fakes_mini, mini_s = mini_pictures(studio, mini_prompts, args.seed)

    judge = load_clip()
    real = judge_features(judge, test.images)
    rows = {
        f"real training pictures ({args.reals})": (judge_features(judge, train.images[rng.choice(len(train), args.reals, replace=False)]), None, None),
        f"GAN {folder.parent.name if folder.name == 'export' else folder.name} ({len(fakes_gan)})": (judge_features(judge, as_uint8(fakes_gan)), gan_s, fakes_gan),
        f"reverie-mini, 20 steps ({len(fakes_mini)})": (judge_features(judge, as_uint8(fakes_mini)), mini_s, fakes_mini),
    }
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    params = sum(p.numel() for p in network.parameters()) / 1e6
    print(f"held-out pictures: {len(test)} (test split of {args.data}); judge: the built-in CLIP's image encoder; "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"GAN: {folder} ({params:.2f} M parameters, {size_mb:.1f} MB on disk, {network.size} px, "
          f"classes {', '.join(network.classes) or 'none'})")
    header = "| pictures | KID x1000 (std) | precision | recall | density | coverage | ms/picture |"
    if args.inception:
        header += " FID |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.inception else ""))
    real_inception = inception_features(args.inception, test.images) if args.inception else None
    for name, (features, seconds, pictures) in rows.items():
        mean, std = kid(real, features, args.subsets, args.subset_size, args.seed)
        precision, recall = precision_recall(real, features)
        density, coverage = density_coverage(real, features)
        ms = f"{1000 * seconds / len(features):.1f}" if seconds is not None else "-"
        line = f"| {name} | {1000 * mean:.2f} ({1000 * std:.2f}) | {precision:.3f} | {recall:.3f} | {density:.3f} | {coverage:.3f} | {ms} |"
        if args.inception:
            fakes = as_uint8(pictures) if pictures is not None else train.images[:args.reals]
            line += f" {fid(real_inception, inception_features(args.inception, fakes)):.1f} |"
        print(line)
    if args.grid:
        from reverie.outputs.grid import make_grid

        shown = []
        for name in network.classes or [""]:
            shown += gan_pictures(studio, gan, [name] * 8, 0)[0]
        make_grid([picture.resize((128, 128)) for picture in shown], columns=8).save(args.grid)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
