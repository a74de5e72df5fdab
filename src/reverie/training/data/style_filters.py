"""Style filters: the project's own renderings of art in named looks, to teach reverie-mini style words.

reverie-mini learned from emoji and icons on white, so "pixel art" or "watercolour" meant nothing
to it. Each filter here turns one such picture into a clear look that survives a 16x16x4 latent
(bold, large-scale changes: background, palette, outlines, blocks), and carries the words its
pictures are captioned with. Filters are pure functions of (picture, rng): numpy and Pillow only,
the same picture and seed give the same result, and any picture size works (sizes scale from 64 px).

Each filter also names a simple statistic of a picture that its look moves, and which way
(`Filter.statistic`, `Filter.direction`): the tests check that every filter moves its own, and
benchmarks/eval_styles.py measures how often generated pictures move it when the style words are
in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

Array = np.ndarray  # float32 [H, W, 3] in 0..1


# ---- small helpers -------------------------------------------------------------------------------

def to_array(picture: Image.Image) -> Array:
    return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


def to_picture(a: Array) -> Image.Image:
    return Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def luminance(a: Array) -> Array:
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def blur(a: Array, radius: float) -> Array:
    """Gaussian blur of an [H, W] or [H, W, C] array (through Pillow, per channel, in float)."""
    if radius <= 0:
        return a.astype(np.float32)
    reach = max(1, int(np.ceil(radius * 3)))
    kernel = np.exp(-0.5 * (np.arange(-reach, reach + 1) / radius) ** 2).astype(np.float32)
    kernel /= kernel.sum()
    pad = [(reach, reach), (reach, reach)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a.astype(np.float32), pad, mode="reflect" if min(a.shape[:2]) > reach else "edge")
    h, w = a.shape[:2]
    rows = sum(k * p[i : i + h] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


def box_mean(a: Array, radius: int) -> Array:
    """Mean over a (2r+1)^2 box around each pixel (edges padded by reflection); [H, W] arrays."""
    padded = np.pad(a, radius + 1, mode="reflect")
    s = padded.cumsum(0).cumsum(1)
    k = 2 * radius + 1
    total = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    return (total / (k * k))[: a.shape[0], : a.shape[1]]


def sobel(gray: Array) -> Array:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy) / 4.0


def dilate(mask: Array, radius: int) -> Array:
    return box_mean(mask.astype(np.float32), radius) > 1e-3


def subject(a: Array) -> Array:
    """Where the art is: pixels clearly away from the white background (soft mask, [H, W] in 0..1)."""
    distance = (1.0 - a).max(axis=-1)
    return np.clip((distance - 0.04) / 0.08, 0.0, 1.0)


def scale(a: Array) -> float:
    """Sizes are designed at 64 px; bigger pictures scale them."""
    return a.shape[0] / 64.0


def noise(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> Array:
    """Smooth random texture with mean 0 and about unit spread."""
    field = blur(rng.standard_normal(shape).astype(np.float32), radius) if radius > 0 else rng.standard_normal(shape).astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def vertical_gradient(h: int, w: int, top, bottom) -> Array:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32), (h, w, 3)).copy()


def radial(h: int, w: int) -> Array:
    """Distance from the centre, 0 there and about 1 at the edge midpoints."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.sqrt(((y - (h - 1) / 2) / (h / 2)) ** 2 + ((x - (w - 1) / 2) / (w / 2)) ** 2)


def ramp(values: Array, stops) -> Array:
    """Map 0..1 values through colour stops spaced evenly (a gradient map)."""
    stops = np.asarray(stops, np.float32)
    positions = np.linspace(0.0, 1.0, len(stops))
    return np.stack([np.interp(values, positions, stops[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def hsv(a: Array) -> tuple[Array, Array, Array]:
    """Hue in degrees, saturation and value, 0..1 arrays."""
    mx, mn = a.max(-1), a.min(-1)
    delta = mx - mn
    safe = np.where(delta > 1e-6, delta, 1.0)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    hue = np.where(delta > 1e-6, hue, 0.0)
    saturation = np.where(mx > 1e-6, delta / np.where(mx > 1e-6, mx, 1.0), 0.0)
    return hue, saturation, mx


def saturate(a: Array, amount: float) -> Array:
    gray = luminance(a)[..., None]
    return np.clip(gray + (a - gray) * amount, 0.0, 1.0)


def composite(fore: Array, back: Array, mask: Array) -> Array:
    return fore * mask[..., None] + back * (1.0 - mask[..., None])


def nearest_palette(a: Array, palette) -> Array:
    palette = np.asarray(palette, np.float32)
    distance = ((a[..., None, :] - palette) ** 2).sum(-1)
    return palette[distance.argmin(-1)]


def outline(labels: Array) -> Array:
    """Pixels where the colour (an [H, W, 3] flat-colour picture) changes to a neighbour's."""
    change = np.zeros(labels.shape[:2], bool)
    diff_x = np.abs(labels[:, 1:] - labels[:, :-1]).sum(-1) > 0.15
    diff_y = np.abs(labels[1:] - labels[:-1]).sum(-1) > 0.15
    change[:, 1:] |= diff_x
    change[1:] |= diff_y
    return change


def thicken(lines: Array, size_scale: float) -> Array:
    """Lines one pixel wide at 64 px, proportionally wider on bigger pictures."""
    radius = int(size_scale // 2)
    return dilate(lines, radius) if radius else lines


def border(a: Array, width: int = 4) -> Array:
    """The outer ring of pixels (where the background is), as [N, 3]."""
    w = max(1, int(round(width * scale(a))))
    ring = np.ones(a.shape[:2], bool)
    ring[w:-w, w:-w] = False
    return a[ring]


# ---- the filters ---------------------------------------------------------------------------------

def pixel_art(a: Array, rng: np.random.Generator) -> Array:
    """A 16x16 sprite: box-averaged cells, a palette of 8 colours, a dark one-cell outline, big square pixels."""
    h, w = a.shape[:2]
    cells = 16
    small = to_array(to_picture(a).resize((cells, cells), Image.Resampling.BOX))
    small = saturate(small, 1.3)
    quantized = to_array(to_picture(small).quantize(colors=8, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB"))
    inside = subject(small) > 0.5
    ring = dilate(inside, 1) & ~inside
    quantized[ring] = (0.13, 0.11, 0.18)
    return to_array(to_picture(quantized).resize((w, h), Image.Resampling.NEAREST))


def ink_sketch(a: Array, rng: np.random.Generator) -> Array:
    """Black ink on white paper: outlines from the edges, diagonal hatching in the dark parts, no colour."""
    h, w = a.shape[:2]
    gray = luminance(a)
    edges = sobel(blur(gray, 0.6 * scale(a)))
    ink = np.clip(edges * 3.0 - 0.15, 0.0, 1.0)
    y, x = np.mgrid[0:h, 0:w]
    period = max(3, int(round(3 * scale(a))))
    hatch = ((x + y) % period == 0).astype(np.float32)
    cross = ((x - y) % period == 0).astype(np.float32)
    inside = subject(a)
    shade = np.clip(0.85 - gray, 0.0, 1.0)
    ink = np.maximum(ink, inside * hatch * np.clip(shade * 2.5, 0, 1) * 0.9)
    ink = np.maximum(ink, inside * cross * np.clip(shade * 2.5 - 1.0, 0, 1) * 0.9)
    paper = np.asarray((0.97, 0.96, 0.93), np.float32) + 0.015 * noise(rng, (h, w), 0)[..., None]
    return paper * (1.0 - ink[..., None]) + np.asarray((0.06, 0.06, 0.08), np.float32) * ink[..., None]


def watercolour(a: Array, rng: np.random.Generator) -> Array:
    """Soft washes: blurred, lightened, mottled pigment with darker pooled edges that bleed past the lines, on grainy paper."""
    h, w = a.shape[:2]
    s = scale(a)
    mask = subject(a)
    bleed = np.clip(blur(mask, 2.0 * s) * 1.6 + 0.25 * noise(rng, (h, w), 2.0 * s) - 0.3, 0.0, 1.0)
    colour = blur(a * mask[..., None] + (1 - mask[..., None]) * blur(a, 3.0 * s), 1.6 * s)
    colour = saturate(colour, 1.15)
    pigment = (1.0 - colour) * (0.75 + 0.22 * noise(rng, (h, w), 1.5 * s))[..., None]
    rim = np.clip(sobel(bleed) * 2.5, 0.0, 1.0)
    pigment = pigment * (0.6 + 0.9 * rim)[..., None] * bleed[..., None]
    paper = np.asarray((0.98, 0.96, 0.91), np.float32) + 0.025 * noise(rng, (h, w), 0.5)[..., None]
    return paper * (1.0 - np.clip(pigment, 0.0, 0.95))


def poster(a: Array, rng: np.random.Generator) -> Array:
    """Flat poster: five flat colours, bold black outlines, a solid bright background."""
    backgrounds = ((0.98, 0.8, 0.15), (0.2, 0.7, 0.7), (0.95, 0.45, 0.4), (0.35, 0.55, 0.9))
    back = np.asarray(backgrounds[rng.integers(len(backgrounds))], np.float32)
    mask = subject(a) > 0.5
    flat = to_array(to_picture(saturate(a, 1.4)).quantize(colors=5, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB"))
    out = np.where(mask[..., None], flat, back)
    lines = thicken(outline(np.where(mask[..., None], flat, 0.0)), scale(a))
    edge = dilate(mask, max(1, int(round(scale(a))))) & ~mask
    out[lines | edge] = (0.05, 0.05, 0.07)
    return out


def synthwave(a: Array, rng: np.random.Generator) -> Array:
    """Neon on a dark purple-to-blue sky with a pink perspective grid; the subject glows pink and cyan."""
    h, w = a.shape[:2]
    s = scale(a)
    sky = vertical_gradient(h, w, (0.1, 0.02, 0.22), (0.35, 0.05, 0.4))
    horizon = int(h * 0.72)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    below = y >= horizon
    depth = np.maximum(y - horizon + 1, 1)
    rows = below & ((np.log(depth) * 3.0 % 1.0) < 0.22)
    cols = below & (np.abs(((x - w / 2) / depth * 6.0) % 4.0 - 2.0) > 1.7)
    sky[below] = (0.08, 0.0, 0.18)
    sky[rows | cols] = (1.0, 0.2, 0.75)
    mask = subject(a)
    gray = luminance(a)
    neon = ramp(gray, [(0.25, 0.0, 0.45), (1.0, 0.15, 0.6), (0.2, 0.95, 1.0)])
    edges = np.clip(sobel(blur(mask, 0.5 * s)) * 4.0, 0, 1)
    glow = np.clip(blur(edges, 1.8 * s) * 2.2, 0, 1)
    out = composite(neon * 0.85, sky, mask)
    out = out + glow[..., None] * np.asarray((1.0, 0.3, 0.9), np.float32) * 0.6 + edges[..., None] * np.asarray((0.3, 1.0, 1.0), np.float32) * 0.7
    return out


def pastel(a: Array, rng: np.random.Generator) -> Array:
    """Soft pastel: little saturation, high lightness, on a pale tinted background."""
    tints = ((0.98, 0.86, 0.9), (0.85, 0.96, 0.9), (0.9, 0.87, 0.98), (0.99, 0.91, 0.82))
    back = np.asarray(tints[rng.integers(len(tints))], np.float32)
    mask = subject(a)
    soft = saturate(a, 0.55)
    soft = 0.45 + 0.55 * soft
    soft = blur(soft, 0.5 * scale(a))
    return composite(soft, back, blur(mask, 0.5 * scale(a)))


def dark_fantasy(a: Array, rng: np.random.Generator) -> Array:
    """Gothic: nearly black surroundings with a heavy vignette and mist, the subject dark and desaturated with a cold rim light."""
    h, w = a.shape[:2]
    s = scale(a)
    r = radial(h, w)
    mist = 0.05 * noise(rng, (h, w), 4.0 * s)
    back = np.asarray((0.12, 0.13, 0.16), np.float32) * np.clip(1.1 - r * 0.8, 0.15, 1)[..., None] + mist[..., None]
    mask = subject(a)
    body = saturate(a, 0.35) ** 1.6 * 0.62
    body = body * np.asarray((1.0, 0.9, 0.92), np.float32)
    rim = np.clip(sobel(blur(mask, 0.6 * s)) * 3.0, 0, 1)
    out = composite(body, back, mask) + rim[..., None] * np.asarray((0.45, 0.5, 0.6), np.float32) * 0.5
    return out * np.clip(1.15 - 0.55 * r, 0.3, 1)[..., None]


def rose_gold(a: Array, rng: np.random.Generator) -> Array:
    """Polished rose gold: the subject's shading mapped to a copper-pink metal ramp with a sheen, on a blush gradient."""
    h, w = a.shape[:2]
    mask = subject(a)
    gray = luminance(a)
    sheen = 0.5 + 0.5 * np.sin(gray * 9.0 + np.linspace(0, 3, h)[:, None])
    metal = ramp(np.clip(0.25 + 0.5 * gray + 0.3 * sheen - 0.1, 0, 1),
                 [(0.35, 0.16, 0.15), (0.72, 0.43, 0.4), (0.93, 0.7, 0.64), (1.0, 0.92, 0.88)])
    back = vertical_gradient(h, w, (0.99, 0.92, 0.9), (0.9, 0.75, 0.73))
    return composite(metal, back, mask)


def cyberpunk(a: Array, rng: np.random.Generator) -> Array:
    """Magenta-cyan duotone on a dark night with faint scanlines; neon cyan outlines."""
    h, w = a.shape[:2]
    s = scale(a)
    mask = subject(a)
    gray = luminance(a)
    duo = ramp(gray, [(0.45, 0.0, 0.4), (1.0, 0.1, 0.65), (0.1, 0.9, 1.0)])
    y = np.arange(h)[:, None]
    period = max(4, int(round(4 * s)))
    back = np.broadcast_to(np.asarray((0.04, 0.03, 0.1), np.float32), (h, w, 3)).copy()
    back[(y % period == 0).repeat(w, axis=1)] = (0.05, 0.18, 0.25)
    edges = np.clip(sobel(blur(mask, 0.5 * s)) * 4.0, 0, 1)
    out = composite(duo, back, mask)
    return out + edges[..., None] * np.asarray((0.0, 0.9, 1.0), np.float32) * 0.8


def steampunk(a: Array, rng: np.random.Generator) -> Array:
    """Sepia and brass: the picture toned brown, on stained old paper with a burnt vignette."""
    h, w = a.shape[:2]
    s = scale(a)
    gray = luminance(a)
    mask = subject(a)
    toned = ramp(gray, [(0.18, 0.09, 0.03), (0.55, 0.36, 0.16), (0.82, 0.64, 0.36), (0.95, 0.86, 0.66)])
    stains = 0.06 * noise(rng, (h, w), 5.0 * s)
    paper = np.asarray((0.86, 0.74, 0.52), np.float32) + stains[..., None]
    out = composite(toned, paper, mask)
    edges = np.clip(sobel(blur(mask, 0.6 * s)) * 3.0, 0, 1)
    out = out * (1 - 0.6 * edges[..., None])
    return out * np.clip(1.2 - 0.6 * radial(h, w), 0.35, 1)[..., None]


UKIYO_E_PALETTE = ((0.16, 0.22, 0.42), (0.78, 0.27, 0.17), (0.86, 0.66, 0.32), (0.45, 0.55, 0.4),
                   (0.93, 0.88, 0.76), (0.12, 0.1, 0.1), (0.55, 0.66, 0.76), (0.8, 0.55, 0.5))


def ukiyo_e(a: Array, rng: np.random.Generator) -> Array:
    """Woodblock print: flat colours from a traditional palette, black key lines, cream washi paper with a band of indigo at the top."""
    h, w = a.shape[:2]
    s = scale(a)
    mask = subject(a) > 0.5
    flat = nearest_palette(blur(a, 0.6 * s), UKIYO_E_PALETTE)
    paper = np.asarray((0.93, 0.87, 0.72), np.float32) + 0.02 * noise(rng, (h, w), 0.7)[..., None]
    band = np.arange(h)[:, None] < int(round(h * 0.12))
    paper = np.where(band[..., None], vertical_gradient(h, w, (0.16, 0.22, 0.42), (0.45, 0.5, 0.65)), paper)
    out = np.where(mask[..., None], flat, paper)
    lines = outline(np.where(mask[..., None], flat, 0.0))
    out[lines] = (0.1, 0.08, 0.08)
    return out


def stained_glass(a: Array, rng: np.random.Generator) -> Array:
    """Stained glass: Voronoi panes of jewel colours (the subject's, saturated; deep glass around it) between dark lead lines."""
    h, w = a.shape[:2]
    s = scale(a)
    count = 40
    points = rng.uniform(0, 1, (count, 2)).astype(np.float32) * np.asarray((h, w), np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    distance = (y[..., None] - points[:, 0]) ** 2 + (x[..., None] - points[:, 1]) ** 2
    cell = distance.argmin(-1)
    jewels = np.asarray(((0.1, 0.2, 0.6), (0.6, 0.08, 0.15), (0.85, 0.6, 0.1), (0.1, 0.45, 0.25), (0.35, 0.15, 0.5)), np.float32)
    mask = subject(a) > 0.5
    # panes: a cell's part inside the subject takes the subject's mean colour there, the rest a jewel colour
    pane = np.where(mask, cell + count, cell)
    flat = pane.ravel()
    sums = np.stack([np.bincount(flat, weights=a[..., c].ravel(), minlength=2 * count) for c in range(3)], -1)
    sizes = np.bincount(flat, minlength=2 * count)
    colours = np.concatenate([jewels[rng.integers(len(jewels), size=count)] * 0.8,
                              saturate(sums[count:] / np.maximum(sizes[count:], 1)[:, None], 1.6)])
    out = colours[pane] * (0.85 + 0.15 * noise(rng, (h, w), 1.0 * s))[..., None]
    lead = thicken(outline(pane[..., None].astype(np.float32).repeat(3, -1) / count), s)
    out[lead] = (0.07, 0.06, 0.06)
    return out


def vibrant(a: Array, rng: np.random.Generator) -> Array:
    """HDR / vibrant: strong saturation and local contrast, on a saturated radial burst of a complementary colour."""
    h, w = a.shape[:2]
    s = scale(a)
    mask = subject(a)
    punchy = saturate(a, 1.9)
    punchy = np.clip(punchy + (punchy - blur(punchy, 3.0 * s)) * 1.5, 0, 1)
    hue, sat, _ = hsv(a)
    weights = mask * sat
    mean_hue = float((hue * weights).sum() / max(weights.sum(), 1e-6))
    burst_hue = (mean_hue + 180.0) % 360.0
    centre = hue_colour(burst_hue, 0.55, 1.0)
    edge = hue_colour((burst_hue + 40) % 360, 1.0, 0.45)
    r = np.clip(radial(h, w), 0, 1.2) / 1.2
    back = (1 - r[..., None]) * centre + r[..., None] * edge
    return composite(punchy, back, mask)


def hue_colour(hue: float, saturation: float, value: float) -> Array:
    import colorsys

    return np.asarray(colorsys.hsv_to_rgb(hue / 360.0, saturation, value), np.float32)


def kuwahara(a: Array, radius: int) -> Array:
    """Kuwahara's painterly smoothing: each pixel takes the mean of its least varied quadrant."""
    gray = luminance(a)
    means, variances = [], []
    for dy in (-radius, radius):
        for dx in (-radius, radius):
            shifted = np.roll(np.roll(a, dy // 2, 0), dx // 2, 1)
            g = np.roll(np.roll(gray, dy // 2, 0), dx // 2, 1)
            r = max(1, radius // 2)
            m = np.stack([box_mean(shifted[..., c], r) for c in range(3)], -1)
            v = box_mean(g * g, r) - box_mean(g, r) ** 2
            means.append(m)
            variances.append(v)
    best = np.argmin(np.stack(variances), axis=0)
    return np.take_along_axis(np.stack(means), best[None, ..., None].repeat(3, -1), 0)[0]


def oil_painting(a: Array, rng: np.random.Generator) -> Array:
    """Oil painting: painterly smoothed colour with brush-stroke texture, before a dark warm umber background."""
    h, w = a.shape[:2]
    s = scale(a)
    mask = blur(subject(a), 0.8 * s)
    paint = kuwahara(saturate(a, 1.25), max(2, int(round(2 * s))))
    # strokes: noise stretched along diagonals (a blur along x + y), coarse at 64 px
    field = rng.standard_normal((h, w)).astype(np.float32)
    length = max(3, int(round(4 * s)))
    strokes = sum(np.roll(np.roll(field, i, 0), i, 1) for i in range(length))
    strokes = (strokes - strokes.mean()) / (strokes.std() + 1e-6)
    back = ramp(np.clip(radial(h, w) / 1.3, 0, 1), [(0.42, 0.28, 0.14), (0.2, 0.12, 0.06)])
    out = composite(paint * 0.95, back, mask)
    return out * (1.0 + 0.07 * strokes[..., None])


# ---- statistics: what each look moves ------------------------------------------------------------

def stat_blockiness(a: Array) -> float:
    """Share of the picture's variance that lies between 4x4 blocks of a 64 px version (1 = perfectly blocky)."""
    g = luminance(to_array(to_picture(a).resize((64, 64), Image.Resampling.BOX)))
    blocks = g.reshape(16, 4, 16, 4)
    within = blocks.var(axis=(1, 3)).mean()
    return float(1.0 - within / (g.var() + 1e-6))


def stat_colourfulness(a: Array) -> float:
    """Mean saturation (HSV) of the picture."""
    return float(hsv(a)[1].mean())


def stat_sharpness(a: Array) -> float:
    """Mean edge strength of a 32 px version (fine grain averages out; crisp outlines stay)."""
    return float(sobel(luminance(to_array(to_picture(a).resize((32, 32), Image.Resampling.BOX)))).mean())


def stat_border_saturation(a: Array) -> float:
    """Mean saturation of the outer ring (the background)."""
    ring = border(a)
    return float(hsv(ring[None])[1].mean())


def stat_pale_washes(a: Array) -> float:
    """Share of pale tinted pixels (saturation 0.04-0.5, value above 0.7): washes and tinted paper, not white, not strong colour."""
    _, sat, val = hsv(a)
    return float(((sat > 0.04) & (sat < 0.5) & (val > 0.7)).mean())


def stat_darkness(a: Array) -> float:
    return float(1.0 - luminance(a).mean())


def stat_purple_dark_border(a: Array) -> float:
    """How dark and purple-blue the outer ring is: mean of (1 - luminance) + ((r + b) / 2 - g)."""
    ring = border(a)
    return float((1.0 - luminance(ring[None])).mean() + ((ring[:, 0] + ring[:, 2]) / 2 - ring[:, 1]).mean())


def stat_pastel_tint(a: Array) -> float:
    """How light yet tinted the background is: saturation of the outer ring times its lightness, minus the subject's top saturation."""
    _, sat, val = hsv(a)
    ring = border(a)
    _, ring_sat, ring_val = hsv(ring[None])
    return float((ring_sat * ring_val).mean() - np.percentile(sat, 90) * 0.5)


def _hue_share(a: Array, low: float, high: float, min_sat: float, max_sat: float = 1.0, min_val: float = 0.15) -> float:
    hue, sat, val = hsv(a)
    inside = (hue >= low) & (hue <= high) & (sat >= min_sat) & (sat <= max_sat) & (val >= min_val)
    return float(inside.mean())


def stat_rose_gold(a: Array) -> float:
    """Share of pixels with rose-copper colour (hue 0-30 or 340-360 degrees, saturation 0.1-0.6)."""
    return _hue_share(a, 0, 30, 0.1, 0.6, 0.3) + _hue_share(a, 340, 360, 0.1, 0.6, 0.3)


def stat_magenta_cyan(a: Array) -> float:
    """Share of pixels that are magenta (hue 285-335) or cyan (hue 170-200), saturated."""
    return _hue_share(a, 285, 335, 0.4) + _hue_share(a, 170, 200, 0.4)


def stat_sepia(a: Array) -> float:
    """Share of pixels that are brownish (hue 20-50 degrees, saturation 0.2-0.8)."""
    return _hue_share(a, 20, 50, 0.2, 0.8, 0.1)


def stat_paper_tone(a: Array) -> float:
    """How cream (warm, not white) the outer ring is: mean of (r + g) / 2 - b there."""
    ring = border(a)
    return float(((ring[:, 0] + ring[:, 1]) / 2 - ring[:, 2]).mean())


def stat_lead_lines(a: Array) -> float:
    """Share of nearly black pixels (luminance below 0.2)."""
    return float((luminance(a) < 0.2).mean())


def stat_warm_dark_border(a: Array) -> float:
    """How dark and warm the outer ring is: share of ring pixels darker than 0.5 with red above blue."""
    ring = border(a)
    return float(((luminance(ring[None])[0] < 0.5) & (ring[:, 0] > ring[:, 2])).mean())


# ---- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filter:
    name: str  # an identifier (file names, the CLI)
    words: str  # the caption suffix the look is taught under
    extra: str  # more words seen in some captions (and in the preset's template)
    render: Callable[[Array, np.random.Generator], Array]
    statistic: Callable[[Array], float]
    direction: int  # +1: the look raises the statistic; -1: lowers it

    def __call__(self, picture: Image.Image, seed: int = 0) -> Image.Image:
        """The picture in this look; the same picture and seed always give the same result."""
        return to_picture(self.render(to_array(picture), np.random.default_rng(seed)))

    def measure(self, picture: Image.Image) -> float:
        return self.statistic(to_array(picture))


FILTERS: tuple[Filter, ...] = (
    Filter("pixel-art", "pixel art", "8-bit, retro game sprite", pixel_art, stat_blockiness, +1),
    Filter("ink-sketch", "ink sketch", "black and white line drawing, cross-hatching", ink_sketch, stat_colourfulness, -1),
    Filter("watercolour", "watercolour", "soft washes, paper texture", watercolour, stat_pale_washes, +1),
    Filter("poster", "flat poster art", "bold outlines, flat colours", poster, stat_border_saturation, +1),
    Filter("synthwave", "synthwave", "neon glow, retrowave", synthwave, stat_purple_dark_border, +1),
    Filter("pastel", "pastel colours", "soft pastel palette", pastel, stat_pastel_tint, +1),
    Filter("dark-fantasy", "dark fantasy", "gothic, moody shadows", dark_fantasy, stat_darkness, +1),
    Filter("rose-gold", "rose gold", "polished metal, blush", rose_gold, stat_rose_gold, +1),
    Filter("cyberpunk", "cyberpunk", "neon magenta and cyan, night", cyberpunk, stat_magenta_cyan, +1),
    Filter("steampunk", "steampunk sepia", "brass, old paper, vintage", steampunk, stat_sepia, +1),
    Filter("ukiyo-e", "ukiyo-e woodblock print", "flat colours, washi paper", ukiyo_e, stat_paper_tone, +1),
    Filter("stained-glass", "stained glass", "mosaic, lead lines, jewel colours", stained_glass, stat_lead_lines, +1),
    Filter("vibrant", "vibrant HDR", "vivid colours, high contrast", vibrant, stat_border_saturation, +1),
    Filter("oil-painting", "oil painting", "brush strokes, dark background", oil_painting, stat_warm_dark_border, +1),
)


def get_filter(name: str) -> Filter:
    for item in FILTERS:
        if item.name == name:
            return item
    raise KeyError(f"unknown style filter {name!r}; one of: {', '.join(f.name for f in FILTERS)}")
