"""The speck near the lower right of reverie-mini's pictures (docs/mini-eval.md, "The speck").

Its encoder writes a marker into every latent at the same place (row 10, column 14 of 16x16),
the denoiser learned to make it, and the decoder draws it as a speck, through a "droplet" (one
spot of huge activations that sets its GroupNorm statistics). A decoder fine-tuned with
`droplet_penalty` loses the droplet but still draws the marker, fainter, so v0.8's autoencoder
still ships: the first two tests check the shipped one on the kind of art mini learned, through
the autoencoder alone (nothing random), and are expected to fail until the speck is gone.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speck import corner_outliers, discs, draw  # noqa: E402

from reverie.models.mini import MINI_DIR, NATIVE_SIDE  # noqa: E402
from reverie.training.autoencoder import DROPLET_LIMIT, droplet_penalty  # noqa: E402


@pytest.fixture(scope="module")
def round_trips():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(MINI_DIR / "vae", local_files_only=True).eval()
    truth = discs(NATIVE_SIDE)
    with torch.no_grad():
        latents = vae.encode(truth * 2 - 1).latent_dist.mean
    return truth, *draw(vae, latents)


SPECK = "v0.8's encoder marks every latent at row 10, column 14, and its decoder draws the mark (docs/mini-eval.md)"


@pytest.mark.xfail(strict=True, reason=SPECK)
def test_mini_decoder_draws_no_speck_in_the_lower_right_corner(round_trips):
    truth, drawn, _ = round_trips
    assert corner_outliers(truth).max() < 0.01  # the art itself: flat colour in every corner
    scores = corner_outliers(drawn)
    # Each disc's lower right is no more disturbed than the worst of its other three corners (the
    # disc's edge passes through all four), give or take the decoder's usual ringing. v0.8 fails
    # this on four of six discs (0.31 against 0.21 at the median), and so does the droplet-free
    # fine-tune (0.26 against 0.12).
    assert (scores[:, 3] <= scores[:, :3].amax(1) + 0.05).all(), scores


@pytest.mark.xfail(strict=True, reason=SPECK)
def test_mini_decoder_has_no_droplet(round_trips):
    _, _, ratio = round_trips
    # v0.8's strongest activation at its last level is 14x the mean one, in the same spot in
    # every picture; the droplet-penalty fine-tune brought it to 3.4x.
    assert (ratio < 2 * DROPLET_LIMIT).all(), ratio


def test_droplet_penalty_counts_a_lone_spike_and_not_an_even_level():
    even = torch.ones(2, 8, 32, 32)
    spiked = even.clone()
    spiked[:, :, 20, 24] = 50.0
    assert droplet_penalty([even]) == 0
    assert droplet_penalty([spiked]) > 1.0
    spiked.requires_grad_(True)
    droplet_penalty([spiked]).backward()
    assert spiked.grad[:, :, 20, 24].sum() > 0  # the penalty pushes the spike itself down
