"""Pictures that do not depend on their batch-mates: the seed promise across shared batches.

A job run alone and the same job sharing a forward pass with other people's jobs (dynamic
batching, jobs/batching.py) must give the same pixels. On a CPU, a matrix product's row is
computed by a different kernel when it falls in a short tail of the matrix (BLAS works in
blocks of rows), so the same row can round differently in batches of 2, 4 and 6. The UNet's
spatial layers are safe (their rows come in whole blocks: every picture has as many tokens),
but its time embeddings are 2-D [batch, features] products whose few rows do fall in tails.

`steady_rows(module)` makes every 2-D linear layer of a module compute each distinct row on its
own, as the first row of a block of `BLOCK_ROWS` (the rest zeros): the same kernel whatever the
batch. Rows that are all equal (one timestep for a whole batch, the usual case) are computed
once. The cost is nil: these products are a few rows of a few hundred features.

Measured on this project's CPU for reverie-mini and SD-layout UNets (tests/test_dynamic_batching.py):
with this, a picture's latents are bit-for-bit the same whatever batch of at most
`STEADY_PICTURES` pictures it shares and wherever it sits in it, given the VAE decodes one
picture at a time (pipelines.memory_settings does).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

BLOCK_ROWS = 4  # rows of the product each row is computed in: a whole block for every BLAS seen
# The most pictures a shared pass may hold (CFG doubles them to 14 UNet rows). Measured on this
# project's CPU: with one thread, batches of 16 rows and more take other kernels, and a picture
# in them rounds differently from the same picture in a smaller batch; with two threads every
# batch up to 32 rows tested was steady. tests/test_dynamic_batching.py checks both.
STEADY_PICTURES = 7


def _steady_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        return F.linear(x, self.weight, self.bias)
    if x.shape[0] > 1 and torch.equal(x, x[:1].expand_as(x)):
        return _one_row(self, x[:1]).expand(x.shape[0], -1).contiguous()
    return torch.cat([_one_row(self, row) for row in x.split(1)])


def _one_row(linear: torch.nn.Linear, row: torch.Tensor) -> torch.Tensor:
    block = torch.cat([row, row.new_zeros(BLOCK_ROWS - 1, row.shape[1])])
    return F.linear(block, linear.weight, linear.bias)[:1]


def steady_rows(module: torch.nn.Module) -> torch.nn.Module:
    """Make `module`'s linear layers batch-invariant on 2-D inputs (in place; idempotent).
    Layers added later (a LoRA's) run as they are: their rows are added to a steady base."""
    for layer in module.modules():
        if type(layer) is torch.nn.Linear and "forward" not in layer.__dict__:
            layer.forward = types.MethodType(_steady_forward, layer)
    return module
