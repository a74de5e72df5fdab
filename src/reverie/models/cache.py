"""One cache for every loaded network: diffusion models, the upscaler, scorers, dreaming's
guides, generators and priors. Bounded by memory; the least recently used entry goes first.

Entries are keyed by a tuple that says what was loaded and how (kind, reference, device, dtype);
the same key always gives the same object, so a dream whose generator and prior are both
reverie-mini loads it once. Entries are shared: per-request state never goes on them. torch is
imported when the first entry comes, so a front end that only queues jobs never imports it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from dataclasses import fields, is_dataclass
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")
DEFAULT_SHARE = 0.5  # of the memory available when the cache is made, unless REVERIE_MODEL_CACHE_GB says


def module_bytes(value) -> int:
    """Bytes held by the parameters and buffers of the torch modules in `value` (a module, or an
    object or dataclass holding modules), each tensor counted once; none for tensors on the meta
    device (a UNet whose OpenVINO export serves in its place holds no memory)."""
    seen: set[int] = set()
    total = 0
    for module in _modules(value, depth=2):
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen and not tensor.is_meta:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def _modules(value, depth: int):
    torch = sys.modules.get("torch")
    if torch is None:
        return  # torch never imported: nothing here is a torch module (OpenVINO-only runs)
    if isinstance(value, torch.nn.Module):
        yield value
        return
    if depth == 0:
        return
    if is_dataclass(value):
        children = [getattr(value, f.name) for f in fields(value)]
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        children = list(getattr(value, "__dict__", {}).values())
    for child in children:
        yield from _modules(child, depth - 1)


def default_budget() -> int:
    gigabytes = os.environ.get("REVERIE_MODEL_CACHE_GB")
    if gigabytes:
        return int(float(gigabytes) * 2**30)
    from ..host import free_memory

    return int(free_memory() * DEFAULT_SHARE)


class ModelCache:
    """`get(key, load)`: the cached entry for `key`, or `load()`'s result, kept for next time."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = default_budget() if max_bytes is None else max_bytes
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader ran (tests and benchmarks read it)

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
            value = load()
            self.loads += 1
            self.put(key, value)
            return value

    def put(self, key: Hashable, value) -> None:
        """Keep `value` under `key`, then drop the least recently used entries until the rest fit
        (the newest entry stays even when it alone is over the bound)."""
        with self._lock:
            # A runtime's stand-in (the OpenVINO UNet) holds weights torch does not see: `weight_bytes`.
            self._entries[key] = (value, module_bytes(value) + int(getattr(value, "weight_bytes", 0) or 0))
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self.bytes > self.max_bytes:
                self._entries.popitem(last=False)

    def locked(self):
        """The cache's own lock, for changing an entry in place (`with models.locked(): ...`)."""
        return self._lock

    def find(self, match: Callable[[Hashable], bool]):
        """The most recently used entry whose key satisfies `match`, or None."""
        with self._lock:
            for key in reversed(self._entries):
                if match(key):
                    return self._entries[key][0]
        return None

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
