"""torch.randn's CPU noise, drawn with NumPy alone.

A picture's seed must give the same starting noise whether its request runs on torch or on a
torch-free path (OpenVINO), and importing torch costs seconds. `TorchCPUGenerator(seed).randn(shape)`
returns the float32 values of `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`;
calls in a row continue the stream as consecutive torch.randn calls on one generator do.

What torch 2.14 does, checked against it by experiment (tests/test_numpy_sampler.py):
- The generator is a standard mt19937 seeded (init_genrand) with the seed's low 32 bits: seeds that
  differ by a multiple of 2**32 give the same noise. torch takes seeds in [-2**63, 2**64); negatives
  wrap modulo 2**64. NumPy's legacy RandomState seeding is the same init_genrand, and its
  `randint(0, 2**32, dtype=uint32)` returns the raw 32-bit outputs in order.
- At least 16 values (float32, contiguous): every value first gets a uniform float, the low 24 bits
  of one draw times 2**-24; then Box-Muller runs over blocks of 16, values j and j+8 of a block
  making one pair (cosine at j, sine at j+8). When the count is not a multiple of 16, 16 more
  uniforms are drawn and the last 16 values are computed again from them.
  On x86 CPUs with AVX2 (torch's "AVX2" and "AVX512" capabilities) torch computes log, sin and
  cos with the Cephes single-precision polynomials of its avx_mathfun.h, which GCC compiles with
  fused multiply-adds. `_cephes_log` and `_cephes_sincos` below redo that arithmetic in float32,
  each fused multiply-add done in float64 and rounded once: this matches torch bit for bit (1.3
  million values checked). torch's "DEFAULT" capability (CPUs without AVX2) uses the C library's
  logf/cosf/sinf instead: 38% of its values differ from these, by at most 2.4e-6 over 1.3 million.
- Fewer than 16 values: one at a time in double precision, each from two 53-bit uniforms (of two
  draws each), radius sqrt(-2 log1p(-u2)), angle 2 pi u1; the sine of each pair is kept in the
  generator and returned by the next such value, even one of a later call.
"""

from __future__ import annotations

import math

import numpy as np

_F32 = np.float32


class TorchCPUGenerator:
    """A torch.Generator("cpu") after `manual_seed(seed)`, for float32 torch.randn draws."""

    def __init__(self, seed: int):
        if not -(2**63) <= seed < 2**64:  # what torch's manual_seed takes
            raise ValueError(f"seed {seed} is out of torch's range [-2**63, 2**64)")
        self._mt = np.random.RandomState(seed & 0xFFFFFFFF)
        self._next_normal: float | None = None  # the cached sine of torch's double-precision path

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next `torch.randn(shape, generator=this, dtype=torch.float32)`."""
        count = math.prod(shape)
        if count >= 16:
            values = self._normal_fill(count)
        else:
            values = np.array([self._normal_double() for _ in range(count)], dtype=_F32)
        return values.reshape(shape)

    def _draws(self, count: int) -> np.ndarray:
        """The next `count` raw 32-bit outputs of the mt19937."""
        return self._mt.randint(0, 2**32, size=count, dtype=np.uint32)

    def _uniform_floats(self, count: int) -> np.ndarray:
        """at::uniform_real_distribution<float>(0, 1): the low 24 bits of a draw, times 2**-24."""
        draws = self._draws(count)
        return (draws & 0xFFFFFF).astype(_F32) * _F32(2.0**-24)

    def _normal_fill(self, count: int) -> np.ndarray:
        values = np.empty(count, dtype=_F32)
        whole = count - count % 16
        values[:whole] = _box_muller_16(self._uniform_floats(count)[:whole])
        if whole != count:
            values[-16:] = _box_muller_16(self._uniform_floats(16))
        return values

    def _normal_double(self) -> float:
        """One value of torch's at::normal_distribution<double>, which keeps the pair's sine for later."""
        if self._next_normal is not None:
            value, self._next_normal = self._next_normal, None
            return value
        high1, low1, high2, low2 = (int(d) for d in self._draws(4))
        u1 = (((high1 << 32) | low1) & (2**53 - 1)) * 2.0**-53
        u2 = (((high2 << 32) | low2) & (2**53 - 1)) * 2.0**-53
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_normal = radius * math.sin(theta)
        return radius * math.cos(theta)


def torch_randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """`torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` as float32 NumPy."""
    return TorchCPUGenerator(seed).randn(shape)


def _box_muller_16(uniform: np.ndarray) -> np.ndarray:
    """torch's normal_fill_16 on consecutive blocks of 16 uniforms: (j, j+8) pairs to (cos, sin)."""
    blocks = uniform.reshape(-1, 16)
    radius = np.sqrt(-2.0 * _cephes_log(1.0 - blocks[:, :8]))
    sin, cos = _cephes_sincos(_TWO_PI * blocks[:, 8:])
    return np.concatenate([radius * cos, radius * sin], axis=1).reshape(-1)


def _fma(a: np.ndarray, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """Fused multiply-add a*b + c of float32 values, rounded once to float32.

    The float64 product of two float32 values is exact; only the sum is rounded twice (to float64,
    then float32), which could differ from one rounding in rare ties: none seen in the tests.
    """
    return (a.astype(np.float64) * b + c).astype(_F32)


def _f32(value: float) -> float:
    """`value` rounded to float32, kept a Python float (NumPy then computes with float32 arrays)."""
    return float(_F32(value))


_TWO_PI = _f32(2.0 * math.pi)
_LOG_POLY = tuple(_f32(p) for p in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
))
_SQRT_HALF, _LOG2_LOW, _LOG2_HIGH = _f32(0.707106781186547524), _f32(-2.12194440e-4), _f32(0.693359375)
_PI_4_PARTS = (_f32(-0.78515625), _f32(-2.4187564849853515625e-4), _f32(-3.77489497744594108e-8))
_COS_POLY = (_f32(2.443315711809948e-5), _f32(-1.388731625493765e-3), _f32(4.166664568298827e-2))
_SIN_POLY = (_f32(-1.9515295891e-4), _f32(8.3321608736e-3), _f32(-1.6666654611e-1))


def _cephes_log(x: np.ndarray) -> np.ndarray:
    """Cephes logf for positive normal float32 x: log(m) + e log 2, with m in [sqrt(1/2), sqrt(2))."""
    bits = x.view(np.uint32)
    exponent = ((bits >> 23).astype(np.int32) - 126).astype(_F32)
    mantissa = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(_F32)  # in [0.5, 1)
    small = mantissa < _SQRT_HALF
    exponent -= small
    m = (mantissa - 1.0) + np.where(small, mantissa, _F32(0.0))
    z = m * m
    y = np.full_like(m, _LOG_POLY[0])
    for coefficient in _LOG_POLY[1:]:
        y = _fma(y, m, coefficient)
    y = _fma(y * m, z, exponent * _LOG2_LOW)
    y = y - z * 0.5
    return _fma(exponent, _LOG2_HIGH, m + y)


def _cephes_sincos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cephes sinf and cosf for float32 x in [0, 2 pi): reduce by multiples of pi/4, then a polynomial."""
    octant = ((x * _f32(4.0 / math.pi)).astype(np.int32) + 1) & ~1
    k = octant.astype(_F32)
    for part in _PI_4_PARTS:  # x - k pi/4, pi/4 split in three parts for an accurate reduction
        x = _fma(k, part, x)
    z = x * x
    cos = _fma(_fma(np.full_like(z, _COS_POLY[0]), z, _COS_POLY[1]), z, _COS_POLY[2])
    cos = _fma(cos * z, z, -(z * 0.5)) + 1.0
    sin = _fma(_fma(np.full_like(z, _SIN_POLY[0]), z, _SIN_POLY[1]), z, _SIN_POLY[2])
    sin = _fma(sin * z, x, x)
    swap = (octant & 2) != 0
    sin, cos = np.where(swap, cos, sin), np.where(swap, sin, cos)
    sin = np.where((octant & 4) != 0, -sin, sin)
    cos = np.where(((octant - 2) & 4) == 0, -cos, cos)
    return sin, cos
