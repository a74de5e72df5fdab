"""Reading a .safetensors file tensor by tensor, straight into a narrower dtype (issue 22).

safetensors' own loaders map the whole file: its pages then count as the process's memory until
the last tensor is dropped, so a 4 GB fp32 SD 1.5 file loaded into bf16 peaks at the file plus
the model. `read_narrowed` reads each tensor with plain reads (no memory map) into one scratch
buffer and narrows it to the requested dtype at once: the file's full-precision weights are never
all resident (SD 1.5 into bf16: 2 GB and one tensor). The format itself is simple enough to read
here: an 8-byte header length, a JSON header of names, dtypes, shapes and byte offsets, then the
data; every offset is checked against the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch

from ..errors import BadCheckpoint

# safetensors' dtype names (the header's "dtype")
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}


def narrowed(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype` when that is a floating-point type no wider than its own; else as it is
    (widening is left to the model's loader, one tensor at a time)."""
    if tensor.is_floating_point() and dtype.itemsize <= tensor.element_size():
        return tensor.to(dtype)
    return tensor


def read_narrowed(path: Path, dtype: torch.dtype, wanted: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the .safetensors file `path`, each `narrowed` to `dtype` as it is read; a
    damaged file is a BadCheckpoint naming it. With `wanted`, only the tensors whose names it
    accepts are read; the others come on the meta device, their shapes without their data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 2 <= header_len <= size - 8:
                raise ValueError("its header length does not fit the file")
            header = json.loads(f.read(header_len))
            header.pop("__metadata__", None)
            data_start = 8 + header_len
            # One scratch buffer, the largest tensor's size, takes every tensor's bytes in turn: a
            # buffer a tensor would free after its cast leaves holes the allocator keeps.
            scratch = bytearray(max((int(e["data_offsets"][1]) - int(e["data_offsets"][0]) for e in header.values()),
                                    default=0))
            state: dict[str, torch.Tensor] = {}
            for name, entry in header.items():
                kind = DTYPES[entry["dtype"]]
                begin, end = (int(offset) for offset in entry["data_offsets"])
                shape = [int(side) for side in entry["shape"]]
                count = math.prod(shape)
                if not 0 <= begin <= end or end - begin != count * kind.itemsize or data_start + end > size:
                    raise ValueError(f"the data of {name} does not fit the file")
                if wanted is not None and not wanted(name):
                    state[name] = narrowed(torch.empty(shape, dtype=kind, device="meta"), dtype)
                    continue
                if count == 0:
                    state[name] = narrowed(torch.empty(shape, dtype=kind), dtype)
                    continue
                f.seek(data_start + begin)
                if f.readinto(memoryview(scratch)[: end - begin]) != end - begin:
                    raise ValueError(f"the file ends inside {name}")
                read = torch.frombuffer(scratch, dtype=kind, count=count).reshape(shape)
                cast = narrowed(read, dtype)
                state[name] = cast if cast.dtype != kind else read.clone()  # off the scratch buffer
            return state
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        reason = f"unknown dtype {e}" if isinstance(e, KeyError) else (str(e).splitlines() or [type(e).__name__])[0]
        raise BadCheckpoint(f"{path.name} is damaged or not a safetensors file ({reason})") from None
