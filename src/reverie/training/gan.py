"""Training a small GAN on a folder of pictures: the discriminator, DiffAugment, the step.

The generator is models/gan.py's. The discriminator is a plain residual CNN that halves the
picture down to 4x4 and reads one score; a class-conditional one adds a projection term
(Miyato & Koyama 2018: the inner product of a class vector with its features). Losses:

- non-saturating logistic loss for both (the StyleGAN2 choice);
- R1 on real pictures (gradient penalty, Mescheder et al. 2018), lazily every R1_EVERY steps
  with its weight scaled by that interval (StyleGAN2);
- DiffAugment (Zhao et al. 2020) on every picture the discriminator sees, real or fake, with
  gradients flowing through it to the generator: colour (brightness, saturation, contrast),
  translation by up to 1/8 of the side, and a cutout of half the side. Seven thousand pictures
  are few for a GAN; without augmentation the discriminator memorises them and training collapses.
- EMA of the generator's weights (the Trainer's), exported.

Each step updates the discriminator `d_steps` times (each on a new batch of reals and fakes),
then the generator against the updated discriminator,
through the shared Trainer (two parts, each with its AdamW at betas (0, 0.99) and a constant
rate), so a run resumes bit for bit on the CPU and writes log.jsonl and sample grids from
fixed seeds like the other trainers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.gan import GANGenerator, save_gan
from ..outputs.grid import make_grid
from ..pixels import to_pictures
from .autoencoder import random_mirror, to_unit_range
from .loop import Part, TrainConfig, Trainer, draw_batch

R1_EVERY = 16  # lazy regularisation: R1 on every 16th step, weighted 16 times (StyleGAN2)
SAMPLE_SEEDS = 8  # pictures per class in a sample grid, seeds 0..7
BETAS = (0.0, 0.99)
GRAD_CLIP = 10.0  # the Trainer clips each part's gradient norm; GAN gradients are larger than 1


@dataclass
class GANSettings:
    """What a GAN run learns, beside the TrainConfig (steps, batch, lr, seed, ...)."""

    size: int = 64
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 2
    g_base: int = 128  # the generator's channels at 4-8 px, halved each block from 16 px on
    d_base: int = 128  # the discriminator's widest channels (at its lowest resolution)
    least: int = 16  # no block narrower than this
    classes: list[str] = field(default_factory=list)  # [] : unconditional
    r1_gamma: float = 0.1
    d_lr: float | None = None  # None: the run's lr
    # Discriminator updates per generator update. With one, the generator moved its pictures to
    # wherever the discriminator scored "real" faster than the discriminator learned: it sat at
    # chance (loss ln 4) and the generator collapsed to one picture per class. With three (on a
    # step-300 checkpoint) its loss fell to 1.31 within 25 steps.
    d_steps: int = 3
    augment: bool = True

    def generator(self) -> GANGenerator:
        from ..models.gan import widths_for

        return GANGenerator(self.size, self.z_dim, self.w_dim, self.mapping_layers,
                            widths_for(self.size, self.g_base, self.least), self.classes)


class DownBlock(nn.Module):
    """Two 3x3 convolutions and a 2x average pool, with a 1x1 shortcut (a residual block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1)
        self.conv2 = nn.Conv2d(cin, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / 2**0.5


class Discriminator(nn.Module):
    """pictures [N, 3, S, S] in [-1, 1] (+ class indices) -> one logit each (higher: more real)."""

    def __init__(self, size: int = 64, base: int = 256, least: int = 32, classes: int = 0):
        super().__init__()
        from ..models.gan import START, widths_for

        widths = list(reversed(widths_for(size, base, least)))  # widest at 4 px
        self.from_rgb = nn.Conv2d(3, widths[0], 1)
        self.blocks = nn.Sequential(*[DownBlock(cin, cout) for cin, cout in zip(widths, widths[1:])])
        features = widths[-1]
        self.conv = nn.Conv2d(features, features, 3, padding=1)
        self.dense = nn.Linear(features * START * START, features)
        self.out = nn.Linear(features, 1)
        self.embed = nn.Embedding(classes, features) if classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.blocks(F.leaky_relu(self.from_rgb(x), 0.2))
        h = F.leaky_relu(self.conv(h), 0.2)
        h = F.leaky_relu(self.dense(h.flatten(1)), 0.2)
        logit = self.out(h).squeeze(1)
        if self.embed is not None and labels is not None:
            logit = logit + (self.embed(labels) * h).sum(dim=1) / h.shape[1] ** 0.5
        return logit


# -- DiffAugment: the same random policy for reals and fakes, differentiable ------------------
def diff_augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Colour, translation and cutout, drawn per picture from `rng` (on the CPU)."""
    n, _, h, w = x.shape
    device = x.device
    draw = lambda *shape: torch.rand(*shape, generator=rng).to(device)  # noqa: E731
    # colour
    x = x + (draw(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (draw(n, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (draw(n, 1, 1, 1) + 0.5) + mean
    # translation by up to 1/8 of the side, whole pixels, zeros shifted in
    shift = h // 8
    dy, dx = (torch.randint(-shift, shift + 1, (2, n), generator=rng)).tolist()
    padded = F.pad(x, (shift, shift, shift, shift))
    x = torch.stack([padded[i, :, shift + dy[i]: shift + dy[i] + h, shift + dx[i]: shift + dx[i] + w] for i in range(n)])
    # cutout: a square of half the side set to zero
    side = h // 2
    cy, cx = (torch.randint(0, h + 1 - side % 2, (2, n), generator=rng)).tolist()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    top = (torch.tensor(cy) - side // 2).view(n, 1, 1)
    left = (torch.tensor(cx) - side // 2).view(n, 1, 1)
    hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return x * (~hole).to(device, x.dtype)[:, None]


# -- losses -------------------------------------------------------------------------------
def discriminator_loss(d: Discriminator, real: torch.Tensor, fake: torch.Tensor, real_labels, fake_labels,
                       rng: torch.Generator, augment: bool, r1_gamma: float = 0.0) -> dict:
    """Non-saturating logistic loss on augmented reals and fakes, plus R1 when `r1_gamma` > 0."""
    look = (lambda x: diff_augment(x, rng)) if augment else (lambda x: x)
    if r1_gamma > 0:
        real = real.detach().requires_grad_(True)
    real_logits = d(look(real), real_labels)
    fake_logits = d(look(fake.detach()), fake_labels)
    loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    metrics = {"d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
        loss = loss + r1_gamma / 2 * r1
        metrics["r1"] = r1.detach()
    return {"loss": loss, **metrics}


def generator_loss(d: Discriminator, fake: torch.Tensor, labels, rng: torch.Generator, augment: bool) -> torch.Tensor:
    logits = d(diff_augment(fake, rng) if augment else fake, labels)
    return F.softplus(-logits).mean()


def class_labels(folders: list[str], classes: list[str]) -> torch.Tensor | None:
    """Each picture's class index from its first subfolder; None for an unconditional GAN."""
    if not classes:
        return None
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[name] for name in folders])


def train_gan(images: torch.Tensor, labels: torch.Tensor | None, out: str | Path, config: TrainConfig,
              settings: GANSettings, quiet: bool = False) -> tuple[GANGenerator, Trainer]:
    """Train on uint8 pictures [N, 3, S, S] (S = settings.size), with class indices [N] for a
    conditional GAN; resumes from `out`. Returns the generator holding the EMA weights, on the CPU, and the trainer."""
    torch.manual_seed(config.seed)
    generator = settings.generator()
    discriminator = Discriminator(settings.size, settings.d_base, settings.least, len(settings.classes))
    parts = {
        "discriminator": Part(discriminator, lr=settings.d_lr, schedule="constant", betas=BETAS, ema=False,
                              grad_clip=GRAD_CLIP, weight_decay=0.0),
        "generator": Part(generator, schedule="constant", betas=BETAS, grad_clip=GRAD_CLIP, weight_decay=0.0),
    }
    trainer = Trainer(parts, out, config, "gan")
    device = trainer.device
    reals = to_unit_range(images)

    def fakes(rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Fakes take the classes of a batch of real pictures: the data's class balance.
        fake_labels = labels[draw_batch(len(reals), config.batch_size, rng)].to(device) if labels is not None else None
        z = torch.randn(config.batch_size, settings.z_dim, generator=rng).to(device)
        return generator(z, fake_labels), fake_labels

    def step(step_index: int, rng: torch.Generator) -> dict:
        for d_step in range(settings.d_steps):
            index = draw_batch(len(reals), config.batch_size, rng)
            real = random_mirror(reals[index], rng).to(device)
            real_labels = labels[index].to(device) if labels is not None else None
            with torch.no_grad():
                fake, fake_labels = fakes(rng)
            lazy = d_step == 0 and step_index % R1_EVERY == 0
            d_metrics = discriminator_loss(discriminator, real, fake, real_labels, fake_labels, rng, settings.augment,
                                           settings.r1_gamma * R1_EVERY if lazy else 0.0)
            trainer.update("discriminator", d_metrics.pop("loss"))
        fake, fake_labels = fakes(rng)
        trainer.update("generator", generator_loss(discriminator, fake, fake_labels, rng, settings.augment))
        return d_metrics

    def sample(step_index: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shown = ema_generator(trainer, generator)
        sample_grid(shown, folder / f"gan-{step_index:06d}.png")

    trainer.run(step, sample, quiet=quiet)
    return ema_generator(trainer, generator).cpu(), trainer


def ema_generator(trainer: Trainer, generator: GANGenerator) -> GANGenerator:
    """A copy of the generator holding the EMA weights, in eval mode."""
    copy_ = copy.deepcopy(generator)
    copy_.load_state_dict(trainer.ema_model_state("generator"))
    return copy_.eval().requires_grad_(False)


@torch.no_grad()
def sample_grid(generator: GANGenerator, path: Path, seeds: int = SAMPLE_SEEDS) -> Path:
    """Seeds 0..seeds-1 (each its own CPU generator, as the gan method draws them), one row per class."""
    device = next(generator.parameters()).device
    z = torch.cat([torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(s)) for s in range(seeds)])
    rows = range(len(generator.classes)) if generator.classes else [None]
    pictures = []
    for label in rows:
        labels = None if label is None else torch.full((seeds,), label, device=device)
        pictures += to_pictures(generator(z.to(device), labels), -1.0, 1.0)
    make_grid(pictures, columns=seeds).save(path)
    return path


def export_gan(generator: GANGenerator, folder: Path, half: bool = True, extra: dict | None = None) -> Path:
    """Compute the generator's mean w (for truncation) and write it as a GAN folder (models/gan.py)."""
    generator = generator.cpu().float()
    generator.compute_w_mean()
    return save_gan(generator, folder, half=half, extra=extra)


SETTINGS_FILE = "gan.json"  # in the run folder: what the run learns, checked when it resumes


def folder_classes(folders: list[str], conditional: bool | None) -> list[str]:
    """The classes of a GAN trained on pictures lying in these first subfolders ("" for none).

    `conditional` None: conditional when every picture lies in a subfolder and there are at least
    two (a built dataset: noto, twemoji, fluent, tabler); True insists on that; False gives none.
    """
    names = sorted(set(folders))
    usable = len(names) >= 2 and "" not in names
    if conditional and not usable:
        from ..errors import ReverieError

        raise ReverieError("--conditional: the pictures must lie in at least two subfolders (one per class), "
                           f"found {', '.join(repr(n) for n in names)}; leave --conditional out")
    return names if usable and conditional is not False else []


def run_gan(data: str | Path, out: str | Path, config: TrainConfig, settings: GANSettings,
            conditional: bool | None = None, quiet: bool = False, half: bool = True) -> Path:
    """Train (or resume) a GAN on `data` (a built dataset's train/ split, or any folder of
    pictures; no captions needed); export the EMA generator to out/export. Returns that folder."""
    import json
    from dataclasses import asdict

    from ..errors import ReverieError
    from .data.folder import read_splits

    train = read_splits(data, settings.size, need_captions=False).train
    folders = [train.top_folder(i) for i in range(len(train))]
    settings.classes = folder_classes(folders, conditional)
    out = Path(out)
    recorded = out / SETTINGS_FILE
    wanted = asdict(settings)
    if recorded.is_file() and (out / "checkpoint").is_dir():
        before = json.loads(recorded.read_text())
        changed = [key for key in wanted if before.get(key) != wanted[key]]
        if changed:
            raise ReverieError(f"--out: {out} holds a GAN run with other settings ({', '.join(changed)} differ: "
                               f"{', '.join(f'{k}={before.get(k)!r}' for k in changed)}); give the same settings, "
                               f"or another --out")
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(wanted, indent=2) + "\n")
    generator, trainer = train_gan(train.images, class_labels(folders, settings.classes), out, config, settings, quiet)
    extra = {"trained_steps": trainer.step, "trained_on": str(data), "pictures": len(train),
             "batch_size": config.batch_size}
    return export_gan(generator, out / "export", half=half, extra=extra)
