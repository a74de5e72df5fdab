"""2D camera moves between video frames, warping a picture by one, and colour coherence.

A move is a 3x3 affine matrix in pixel coordinates that maps an OUTPUT point (x, y, 1) to the
SOURCE point it is read from (the inverse map a resampler needs). Coordinates have their origin
at the picture's top-left corner, x to the right and y down, and pixel (i, j) covers
[i, i+1) x [j, j+1), so its centre is (i + 0.5, j + 0.5) and the picture's centre is (W/2, H/2).
This is grid_sample's `align_corners=False` convention, so a matrix carries over exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import BadRequest
from ...pixels import to_picture, to_tensor

Matrix = np.ndarray  # 3x3 float64: output pixel coordinates -> source pixel coordinates

BORDERS = ("reflect", "replicate", "wrap")
COLOUR_SPACES = ("rgb", "hsv", "lab")


# -- moves --------------------------------------------------------------------------------------
def camera_matrix(size: tuple[int, int], zoom: float = 1.0, angle: float = 0.0,
                  translation_x: float = 0.0, translation_y: float = 0.0) -> Matrix:
    """One frame's camera move on a picture of `size` (width, height), about its centre.

    `zoom` > 1 moves in (the content grows by that factor), `angle` turns the content that many
    degrees counter-clockwise on screen, then the content moves `translation_x` pixels right and
    `translation_y` pixels down. (1, 0, 0, 0) gives the identity exactly.
    """
    if not zoom > 0 or not math.isfinite(zoom):
        raise BadRequest("zoom", f"the zoom must be a positive number, not {zoom}")
    width, height = size
    centre_x, centre_y = width / 2, height / 2
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    # The content moves p -> C + zoom * R(angle) (p - C) + t, with R turning ccw on a y-down
    # screen; the matrix is that move's inverse, written out so that the identity is exact.
    unturn = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    unzoom = np.diag([1.0 / zoom, 1.0 / zoom, 1.0])
    return _shift(centre_x, centre_y) @ unturn @ unzoom @ _shift(-centre_x - translation_x, -centre_y - translation_y)


def _shift(x: float, y: float) -> Matrix:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def compose(*moves: Matrix) -> Matrix:
    """The move of doing moves[0], then moves[1], ... (the identity when there are none).

    Matrices map output to source, so the last move is applied to the output point first."""
    result = np.eye(3)
    for move in moves:
        result = result @ np.asarray(move, dtype=np.float64)
    return result


def invert(move: Matrix) -> Matrix:
    """The move that undoes `move`."""
    return np.linalg.inv(np.asarray(move, dtype=np.float64))


def is_identity(move: Matrix, tol: float = 1e-9) -> bool:
    """Whether `move` leaves every point where it is (each entry within `tol` of the identity's)."""
    return bool(np.max(np.abs(np.asarray(move, dtype=np.float64) - np.eye(3))) <= tol)


# -- warping ------------------------------------------------------------------------------------
def warp(picture: Image.Image, move: Matrix, border: str = "reflect") -> Image.Image:
    """`picture` seen through the camera `move`: same size, RGB.

    Bicubic resampling (torch grid_sample, align_corners=False); the area the move brings in from
    outside the picture is filled by `border`: "reflect" (mirrored about the edge, the edge pixel
    repeated once), "replicate" (the edge pixels stretched) or "wrap" (the opposite side, as a
    tile). The identity gives an exact copy.
    """
    if border not in BORDERS:
        raise BadRequest("border", f"unknown border {border!r}; use one of {', '.join(BORDERS)}")
    picture = picture.convert("RGB")
    if is_identity(move):
        return picture.copy()
    width, height = picture.size
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.asarray(move, dtype=np.float64).T
    source_x, source_y = points[..., 0] / points[..., 2], points[..., 1] / points[..., 2]
    tensor = to_tensor(picture)
    if border == "wrap":
        # Wrap the coordinates into the picture, then pad it with its own opposite sides by the
        # bicubic kernel's reach (2 px), so that the taps near an edge read across it too.
        source_x, source_y = np.mod(source_x, width) + 2, np.mod(source_y, height) + 2
        tensor = F.pad(tensor, (2, 2, 2, 2), mode="circular")
    padded_height, padded_width = tensor.shape[-2:]
    grid = np.stack([2 * source_x / padded_width - 1, 2 * source_y / padded_height - 1], axis=-1)
    grid = torch.from_numpy(grid).float()[None]
    padding = {"reflect": "reflection", "replicate": "border", "wrap": "border"}[border]
    warped = F.grid_sample(tensor, grid, mode="bicubic", padding_mode=padding, align_corners=False)
    return to_picture(warped)  # bicubic overshoots a little; to_picture clamps and rounds


# -- colour coherence ---------------------------------------------------------------------------
def match_colours(picture: Image.Image, reference: Image.Image, space: str = "lab") -> Image.Image:
    """`picture` with each channel's histogram matched to `reference`'s in `space` ("rgb",
    "hsv" or "lab"): the colour coherence that keeps an animation from drifting in colour.

    The two may differ in size; the result has `picture`'s size. Matching a picture to itself
    gives it back exactly in rgb and within a level in hsv and lab (the colour-space round trip).
    """
    if space not in COLOUR_SPACES:
        raise BadRequest("colour_coherence", f"unknown colour space {space!r}; use one of {', '.join(COLOUR_SPACES)}")
    to_space, from_space = _SPACES[space]
    source = to_space(_levels(picture) / 255.0)
    target = to_space(_levels(reference) / 255.0)
    matched = np.stack([_match_channel(source[..., c], target[..., c]) for c in range(3)], axis=-1)
    return _picture(from_space(matched) * 255.0)


def _match_channel(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CDF matching: each source value goes to the reference value at the same quantile."""
    values, where, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    reference_values, reference_counts = np.unique(reference.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    reference_quantiles = np.cumsum(reference_counts) / reference.size
    return np.interp(quantiles, reference_quantiles, reference_values)[where].reshape(source.shape)


def _identity(array: np.ndarray) -> np.ndarray:
    return array


# sRGB (D65) <-> CIE XYZ <-> CIELAB, on floats in [0, 1] (L in [0, 100]).
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_D65_WHITE = _RGB_TO_XYZ.sum(axis=1)  # the XYZ of sRGB white (0.9505, 1, 1.089)
_EPSILON, _KAPPA = 216 / 24389, 24389 / 27


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (linear @ _RGB_TO_XYZ.T) / _D65_WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f ** 3 > _EPSILON, f ** 3, (116 * f - 16) / _KAPPA) * _D65_WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)  # matched colours may leave the sRGB gamut
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Hue, saturation and value in [0, 1] (hue 0 = red, as colorsys)."""
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    red, green, blue = (rgb[..., c] for c in range(3))
    hue = np.where(value == red, ((green - blue) / safe) % 6,
                   np.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4))
    hue = np.where(chroma > 0, hue / 6, 0.0)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    hue, saturation, value = (hsv[..., c] for c in range(3))
    k = np.stack([(n + hue * 6) % 6 for n in (5, 3, 1)], axis=-1)  # red, green, blue
    return value[..., None] - (value * saturation)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


_SPACES = {"rgb": (_identity, _identity), "hsv": (_rgb_to_hsv, _hsv_to_rgb), "lab": (_rgb_to_lab, _lab_to_rgb)}


# -- blending -----------------------------------------------------------------------------------
def blend(a: Image.Image, b: Image.Image, weight: float) -> Image.Image:
    """(1 - weight) * a + weight * b, rounded to the nearest level: a cross-fade between two
    same-size frames (weight 0 gives `a`, 1 gives `b`)."""
    first, second = _levels(a), _levels(b)
    if first.shape != second.shape:
        raise ValueError(f"blend needs two pictures of one size, not {a.size} and {b.size}")
    return _picture((1.0 - weight) * first + weight * second)


def _levels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.float64)


def _picture(levels: np.ndarray) -> Image.Image:
    """float levels -> 8-bit RGB, clamped and rounded to the nearest level (half up)."""
    return Image.fromarray(np.floor(np.clip(levels, 0, 255) + 0.5).astype(np.uint8))
