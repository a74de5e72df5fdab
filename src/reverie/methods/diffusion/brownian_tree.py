"""torchsde's Brownian interval in NumPy: the noise of diffusers' DPM++ SDE Karras, as torch draws it.

diffusers' DPMSolverSDEScheduler takes each step's noise from Brownian motion on [sigma_min,
sigma_max], one `torchsde.BrownianInterval` per picture (tol 1e-6, pool_size 24, halfway_tree,
no Levy area) seeded with the picture's seed. Its increment over a query [a, b] is found in a
binary tree of intervals: the root holds W over the whole span, an interval is split at its
(rounded) middle into two children whose W is a Brownian bridge of their parent's, and a query
is the sum of the nodes that tile it, splitting where the tree does not reach its ends yet.
`BrownianTree` is that interval, bit for bit (tests/test_brownian_tree.py holds it to torchsde):

- Seeds: NumPy's SeedSequence(entropy, pool_size=24); the root's W from generate_state(3)[0],
  and a node's split from SeedSequence(entropy, spawn_key=(key, depth)).generate_state(4)[0],
  the root's key 0 at depth 0 and a child's 2 x its parent's + (0 left, 1 right).
- Noise: torch.randn of the picture's shape from a CPU generator seeded so
  (torch_noise.TorchCPUGenerator).
- Arithmetic: torchsde takes every time as a Python float (double), each end and middle of an
  interval and each query's time rounded to 6 decimals. A split's left child's W is
  (left * W) * (1 / h) + sqrt(left * right / h) * noise, each double factor rounded to float32
  as torch multiplies a float32 tensor by a Python float; the right child's is the parent's
  less the left's.

torchsde keeps the last 45 nodes' W in an LRU cache and works any other out again from its
parent's; so does this port (nodes are the picture's size, and a query goes some 20 levels deep).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ...torch_noise import TorchCPUGenerator

_F32 = np.float32
_DIGITS = 6  # torchsde rounds to -log10(tol) decimals, tol 1e-6
_POOL = 24  # SeedSequence's pool_size, as diffusers asks
_CACHE = 45  # nodes whose W is kept (torchsde's cache_size default)
_DEEPEST = 200  # splits in a row past which a time is taken as one the halving never reaches (it has not happened)


class _Node:
    """An interval [start, end] of the tree: where it splits (`middle`, once it has), its children."""

    __slots__ = ("start", "end", "parent", "is_left", "key", "depth", "middle", "left", "right")

    def __init__(self, start: float, end: float, parent: "_Node | None", is_left: bool):
        self.start, self.end = round(start, _DIGITS), round(end, _DIGITS)
        self.parent, self.is_left = parent, is_left
        self.key = 0 if parent is None else 2 * parent.key + (0 if is_left else 1)
        self.depth = 0 if parent is None else parent.depth + 1
        self.middle: float | None = None
        self.left = self.right = None


class BrownianTree:
    """One picture's Brownian motion over [t0, t1] (the float32 sigmas' values), seeded with
    `entropy`, of `shape`; `tree(a, b)` is its increment from a to b (a <= b), float32."""

    def __init__(self, entropy: int, t0: float, t1: float, shape: tuple[int, ...]):
        t0, t1 = float(t0), float(t1)
        self.entropy, self.shape = int(entropy), tuple(shape)
        self._root = _Node(t0, t1, None, True)
        root_seed = np.random.SeedSequence(self.entropy, pool_size=_POOL).generate_state(3)[0]
        self._root_w = self._draw(root_seed) * _F32(math.sqrt(t1 - t0))
        self._cache: OrderedDict[_Node, np.ndarray] = OrderedDict()

    def __call__(self, a: float, b: float) -> np.ndarray:
        start, end = self._root.start, self._root.end
        low, high = (min(max(float(t), start), end) for t in (a, b))  # torchsde clamps, with a warning
        if low > high:
            raise ValueError(f"a Brownian increment from {a} to {b}: the start comes after the end")
        low, high = round(low, _DIGITS), round(high, _DIGITS)
        if low == high:
            return np.zeros(self.shape, _F32)
        pieces: list[_Node] = []
        self._tile(self._root, low, high, pieces)
        w = self._w(pieces[0])
        for piece in pieces[1:]:
            w = w + self._w(piece)
        return w

    def _draw(self, seed) -> np.ndarray:
        return TorchCPUGenerator(int(seed)).randn(self.shape)

    def _tile(self, node: _Node, low: float, high: float, pieces: list) -> None:
        """Append the nodes that tile [low, high] within `node`, in order, splitting as torchsde's _loc does."""
        while True:
            if low == node.start and high == node.end:
                pieces.append(node)
                return
            if node.middle is None:
                self._split(node, high if low == node.start else low)
            if high <= node.middle:
                node = node.left
            elif low >= node.middle:
                node = node.right
            else:
                self._tile(node.left, low, node.middle, pieces)
                node, low = node.right, node.middle

    def _split(self, node: _Node, point: float) -> None:
        """Split `node` at its middle, then the child `point` falls in, until a middle is `point`
        (torchsde's halfway tree)."""
        for _ in range(_DEEPEST):
            middle = 0.5 * (node.end + node.start)
            node.middle = round(middle, _DIGITS)
            node.left, node.right = _Node(node.start, middle, node, True), _Node(middle, node.end, node, False)
            if point > node.middle:
                node = node.right
            elif point < node.middle:
                node = node.left
            else:
                return
        raise ValueError(f"the Brownian tree cannot resolve the time {point} to {_DIGITS} decimals")

    def _w(self, node: _Node) -> np.ndarray:
        """The Brownian increment over `node`: the root's, or a bridge of its parent's (cached)."""
        if node.parent is None:
            return self._root_w
        if node in self._cache:
            self._cache.move_to_end(node)
            return self._cache[node]
        parent = node.parent
        parent_w = self._w(parent)
        reciprocal = 1 / (parent.end - parent.start)
        left_span, right_span = parent.middle - parent.start, parent.end - parent.middle
        spread = _F32(math.sqrt(left_span * right_span * reciprocal))
        noise = self._draw(np.random.SeedSequence(self.entropy, spawn_key=(parent.key, parent.depth),
                                                  pool_size=_POOL).generate_state(4)[0])
        left_w = (_F32(left_span) * parent_w) * _F32(reciprocal) + spread * noise
        w = left_w if node.is_left else parent_w - left_w
        self._cache[node] = w
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return w
