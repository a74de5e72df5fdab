"""The NumPy Brownian tree is torchsde's, bit for bit: the noise of DPM++ SDE Karras without torch."""

import warnings

import numpy as np
import pytest
import torch
import torchsde

from reverie.methods.diffusion.brownian_tree import BrownianTree

LOW, HIGH = np.float32(0.0291675), np.float32(14.614642)  # SD 1.5's Karras sigmas' ends


def torchsde_interval(entropy: int, shape: tuple) -> torchsde.BrownianInterval:
    """The interval diffusers' BatchedBrownianTree makes for one seed."""
    return torchsde.BrownianInterval(t0=torch.tensor(LOW), t1=torch.tensor(HIGH), size=shape, dtype=torch.float32,
                                     entropy=entropy, tol=1e-6, pool_size=24, halfway_tree=True)


@pytest.mark.parametrize("entropy, shape", [(5, (4, 8, 8)), (2**32 - 7, (1, 4, 8, 8)), (2**63 - 5, (3, 5))])
def test_increments_are_torchsdes_bit_for_bit(entropy, shape):
    """Random queries (a third from the lower end), then a sampler's: down the sigmas pass by pass."""
    theirs, mine = torchsde_interval(entropy, shape), BrownianTree(entropy, LOW, HIGH, shape)
    rng = np.random.default_rng(entropy % 1000)
    queries = [np.sort(np.exp(rng.uniform(np.log(0.02), np.log(16), 2)).astype(np.float32)) for _ in range(60)]
    queries = [(LOW, b) if i % 3 == 0 else (a, b) for i, (a, b) in enumerate(queries)]
    sigmas = np.geomspace(HIGH, LOW, 21).astype(np.float32)
    queries += [(low, high) for high, low in zip(sigmas, sigmas[1:])]
    for a, b in queries:
        np.testing.assert_array_equal(mine(a, b), theirs(torch.tensor(a), torch.tensor(b)).numpy())


def test_times_past_the_ends_are_clamped_as_torchsde_clamps_them():
    theirs, mine = torchsde_interval(7, (4, 4)), BrownianTree(7, LOW, HIGH, (4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde warns of the clamp
        expected = theirs(torch.tensor(np.float32(0.01)), torch.tensor(np.float32(20.0))).numpy()
    np.testing.assert_array_equal(mine(0.01, 20.0), expected)
    np.testing.assert_array_equal(mine(LOW, HIGH), expected)


def test_the_motion_is_brownian():
    """Increments over disjoint spans add up to the whole's and are independent, each with variance
    its span's length; another seed is another motion."""
    tree = BrownianTree(11, LOW, HIGH, (200_000,))
    a, b, c = np.float32(0.5), np.float32(2.0), np.float32(9.0)
    first, second = tree(a, b), tree(b, c)
    np.testing.assert_allclose(first + second, tree(a, c), atol=1e-5)
    assert np.var(first) == pytest.approx(float(b - a), rel=0.02)
    assert np.var(second) == pytest.approx(float(c - b), rel=0.02)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01
    assert abs(np.corrcoef(first, BrownianTree(12, LOW, HIGH, (200_000,))(a, b))[0, 1]) < 0.01
    assert not tree(b, b).any()
    with pytest.raises(ValueError, match="start comes after the end"):
        tree(c, a)
