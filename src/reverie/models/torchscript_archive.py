"""Read the tensors of a TorchScript archive (OpenAI's CLIP files) without running it.

`torch.jit.load` would run the archive's TorchScript, and `torch.load(weights_only=True)`
refuses such files. This reader unpickles only the module tree: every `__torch__` class
becomes an inert record, tensors are rebuilt from the archive's raw storages, and any other
global is refused. Nothing from the file is executed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import BadCheckpoint

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _Record:
    """What a scripted module becomes: its attributes, nothing callable."""

    def __setstate__(self, state):
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _Record
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only tensors and module records are read")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unknown storage record {pid!r}")
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        if not raw:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(raw, dtype=dtype)[:numel]


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _collect(record: _Record, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in record.attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _Record):
            _collect(value, f"{prefix}{name}.", out)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the scripted module tree, named by its dotted path."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            data_name = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
            prefix = data_name.split("/")[0]
            root = _ArchiveUnpickler(archive, prefix, archive.read(data_name)).load()
    except StopIteration:
        raise BadCheckpoint(f"{path.name} is a zip archive but not a TorchScript model (no data.pkl)") from None
    except pickle.UnpicklingError as exc:
        raise BadCheckpoint(f"{path.name}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, RuntimeError) as exc:
        raise BadCheckpoint(f"{path.name} is damaged or truncated ({exc})") from None
    if not isinstance(root, _Record):
        raise BadCheckpoint(f"{path.name} does not hold a scripted module")
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors)
    if not tensors:
        raise BadCheckpoint(f"{path.name} holds no weights")
    return tensors
