"""Keeping the content picture's colours: luminance-only transfer (Gatys et al., 2016).

The styled picture gives the luminance (Y of YCbCr, BT.601), the content picture its chroma
(Cb, Cr): strokes and texture come from the style, hues and saturation stay the content's.
"""

from __future__ import annotations

import torch

# BT.601 full range, as JPEG uses it
TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
TO_RGB = torch.linalg.inv(TO_YCBCR)


def to_ycbcr(pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in [0, 1] -> Y in [0, 1], Cb and Cr in [-0.5, 0.5]."""
    return torch.einsum("ij,njhw->nihw", TO_YCBCR.to(pixels), pixels)


def to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", TO_RGB.to(ycbcr), ycbcr)


def keep_colours(styled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """`styled`'s luminance pattern with `content`'s chroma (same size), clamped to [0, 1].

    The styled luminance is first given the content's mean and spread (as Gatys et al. match
    the style's luminance to the content's): a dark style under bright colours would otherwise
    leave the RGB gamut, and clamping there changes the hues this is meant to keep."""
    luma, kept = to_ycbcr(styled)[:, :1], to_ycbcr(content)
    target = kept[:, :1]
    luma = (luma - luma.mean((2, 3), keepdim=True)) / luma.std((2, 3), keepdim=True).clamp_min(1e-6)
    luma = luma * target.std((2, 3), keepdim=True) + target.mean((2, 3), keepdim=True)
    return to_rgb(torch.cat([luma, kept[:, 1:]], dim=1)).clamp(0, 1)
