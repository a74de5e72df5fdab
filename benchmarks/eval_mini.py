"""How good is reverie-mini? Prompt following and fidelity, scored with the built-in CLIP.

Test prompts are worded unlike the training captions (paraphrases, single tag words, style
combinations never seen), plus concepts kept out of all training (the test split) to show
the limits. Each prompt gets 4 pictures; each picture is scored by the built-in CLIP against
all 100 prompts. Prints top-1/top-5 per group, against chance and against real pictures of
the same concepts scored the same way (the ceiling), then fidelity on CLIP features.

    .venv/bin/python benchmarks/eval_mini.py --data data/build/mini-64
    .venv/bin/python benchmarks/eval_mini.py --model-dir runs/mini-v03 --clip-dir runs/clip/export
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

STYLE_PARAPHRASE = {
    "Noto emoji": "Google's Noto emoji set",
    "Twemoji": "Twitter's emoji set",
    "flat Fluent emoji": "Microsoft's flat emoji set",
    "line icon": "a thin outline pictogram",
}
PARAPHRASE_TEMPLATES = ("an emoji of {label}, drawn like {style}", "{style} artwork showing {label}", "{label} as in {style}")


def catalogue(data: Path):
    """(label, style, split, picture index) for every picture, and the pictures themselves."""
    from reverie.training.data.folder import ImageCaptionFolder

    entries, pictures = [], {}
    for split in ("train", "test"):
        folder = ImageCaptionFolder(data, size=64, split=split)
        pictures[split] = folder.images
        for i, lines in enumerate(folder.captions):
            label, style = lines[0].rsplit(", ", 1)
            tags = lines[-1].split(", ")[:-1] if len(lines) > 4 else []
            entries.append({"label": label, "style": style, "split": split, "index": i, "tags": tags})
    return entries, pictures


def test_prompts(entries: list[dict], seed: int = 0) -> list[dict]:
    """100 prompts: 50 paraphrases, 20 single tags, 20 unseen style combinations, 10 unseen concepts."""
    rng = random.Random(seed)
    train = [e for e in entries if e["split"] == "train"]
    test = [e for e in entries if e["split"] == "test"]
    seen = {(e["label"], e["style"]) for e in train}
    styles = sorted(STYLE_PARAPHRASE)
    used, prompts = set(), []

    def take(pool, count, make, group):
        rng.shuffle(pool)
        for entry in pool:
            if len([p for p in prompts if p["group"] == group]) == count:
                break
            item = make(entry)
            if item and item["text"] not in used and entry["label"] not in {p["label"] for p in prompts}:
                used.add(item["text"])
                prompts.append(item | {"group": group, "label": entry["label"]})

    take(list(train), 50, lambda e: {"text": rng.choice(PARAPHRASE_TEMPLATES).format(label=e["label"], style=STYLE_PARAPHRASE[e["style"]]),
                                     "real": ("train", e["index"])}, "paraphrase")
    take([e for e in train if e["tags"]], 20, lambda e: {"text": f"{rng.choice(e['tags'])}, {e['style']}", "real": ("train", e["index"])}, "tag word")

    def new_combo(e):
        unseen = [s for s in styles if (e["label"], s) not in seen]
        return {"text": f"{e['label']}, {rng.choice(unseen)}", "real": None} if unseen else None

    take(list(train), 20, new_combo, "new style")
    take(list(test), 10, lambda e: {"text": f"{e['label']}, {e['style']}", "real": ("test", e["index"])}, "unseen concept")
    return prompts


def ranks(image_features: torch.Tensor, text_features: torch.Tensor, truth: list[int]) -> np.ndarray:
    order = (image_features @ text_features.T).argsort(dim=1, descending=True)
    return np.array([int((order[i] == t).nonzero()[0]) for i, t in enumerate(truth)])


def kid(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kernel Inception Distance with the cubic polynomial kernel, on any features."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1)) - 2 * kxy.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/build/mini-64"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--model-dir", type=Path, help="a reverie-mini folder to judge (default: the built-in model)")
    parser.add_argument("--clip-dir", type=Path, help="the judge: a mini-clip folder (default: the built-in CLIP)")
    parser.add_argument("--rerank", type=int, default=1,
                        help="keep the best 4 of 4 x N candidates, chosen by the built-in CLIP (judge with another --clip-dir, "
                             "or the judge grades its own choice)")
    args = parser.parse_args()

    from reverie.models.mini import load_mini
    from reverie.models.mini_clip import CLIP_DIR, load_clip
    from reverie.studio import make_request
    from reverie.studio import Studio
    from reverie.training.autoencoder import to_unit_range

    entries, real = catalogue(args.data)
    prompts = test_prompts(entries)
    texts = [p["text"] for p in prompts]
    clip = load_clip(args.clip_dir or CLIP_DIR)
    studio = Studio(device="cpu")
    model = "mini"
    if args.model_dir:
        model = "under-test"
        studio.add_model(model, load_mini(folder=args.model_dir))
    started = time.perf_counter()
    generated = []
    for i, text in enumerate(texts):
        request = make_request(prompt=text, model=model, steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler,
                               seed=1000 + 4 * i * args.rerank, n_samples=4, upscale=1, rerank=args.rerank)
        generated += [torch.from_numpy(np.array(img.image)).permute(2, 0, 1) for img in studio.generate(request).images]
    seconds = time.perf_counter() - started
    gen_features = clip.encode_images(to_unit_range(torch.stack(generated)))
    text_features = clip.encode_texts(texts)
    gen_ranks = ranks(gen_features, text_features, [i for i in range(len(texts)) for _ in range(4)])

    with_real = [i for i, p in enumerate(prompts) if p["real"]]
    real_pictures = torch.stack([real[prompts[i]["real"][0]][prompts[i]["real"][1]] for i in with_real])
    real_features = clip.encode_images(to_unit_range(real_pictures))
    real_ranks = ranks(real_features, text_features, with_real)

    rows = []
    chosen = f", best of {4 * args.rerank}" if args.rerank > 1 else ""
    print(f"reverie-mini, {len(texts)} test prompts x 4 pictures{chosen}, {args.steps} steps {args.sampler} CFG {args.cfg} "
          f"({seconds:.0f} s to generate)")
    print(f"{'group':<16} {'prompts':>7} {'top-1':>7} {'top-5':>7} {'real top-1':>11} {'real top-5':>11}")
    for group in ("paraphrase", "tag word", "new style", "unseen concept", "all"):
        members = [i for i, p in enumerate(prompts) if group == "all" or p["group"] == group]
        g = np.concatenate([gen_ranks[4 * i : 4 * i + 4] for i in members])
        r = np.array([real_ranks[with_real.index(i)] for i in members if i in with_real])
        row = {"group": group, "prompts": len(members), "top1": float((g < 1).mean()), "top5": float((g < 5).mean()),
               "real_top1": float((r < 1).mean()) if len(r) else None, "real_top5": float((r < 5).mean()) if len(r) else None}
        rows.append(row)
        fmt = lambda v: f"{100 * v:10.1f}%" if v is not None else f"{'-':>11}"  # noqa: E731
        print(f"{group:<16} {len(members):>7} {100 * row['top1']:6.1f}% {100 * row['top5']:6.1f}% {fmt(row['real_top1'])} {fmt(row['real_top5'])}")
    print(f"{'chance':<16} {'':>7} {1.0:6.1f}% {5.0:6.1f}%")

    # Fidelity: distance between generated and real pictures of the same prompts, against the
    # same pictures paired with another prompt's real picture (a shuffled-caption baseline).
    per_prompt = torch.nn.functional.normalize(gen_features.view(len(texts), 4, -1).mean(1), dim=-1)[with_real]
    matched = float((1 - (per_prompt * real_features).sum(-1)).mean())
    shuffled_order = torch.roll(torch.arange(len(with_real)), 1)
    shuffled = float((1 - (per_prompt * real_features[shuffled_order]).sum(-1)).mean())
    test_real = real["test"]
    test_features = clip.encode_images(to_unit_range(test_real[torch.randperm(len(test_real), generator=torch.Generator().manual_seed(0))[:400]]))
    train_features = clip.encode_images(to_unit_range(real["train"][torch.randperm(len(real["train"]), generator=torch.Generator().manual_seed(1))[:400]]))
    fidelity = {"kid_generated_vs_real_test": kid(gen_features, test_features),
                "kid_real_train_vs_real_test": kid(train_features, test_features),
                "clip_distance_matched": matched, "clip_distance_shuffled_captions": shuffled}
    print(f"KID (CLIP features) generated vs real held-out: {fidelity['kid_generated_vs_real_test']:.2e}  "
          f"(real train vs real held-out: {fidelity['kid_real_train_vs_real_test']:.2e})")
    print(f"CLIP distance to the real picture of the same prompt: {matched:.3f}  (shuffled captions: {shuffled:.3f})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "fidelity": fidelity, "prompts": prompts}, indent=2))


if __name__ == "__main__":
    main()
