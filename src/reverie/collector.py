"""Python's cyclic garbage collector, and the imports behind reverie's methods.

torch, diffusers, transformers and peft leave more than a million objects alive for the life of
the process, and Python's collector walks all of them again at each full collection: eight
times while a first `reverie generate` imports them and makes its pictures (0.6 s on a 2-core
Zen 3), and once more as the interpreter shuts down (0.8 s). A process that owns its interpreter
(the `reverie` command, and so `reverie serve` and `reverie worker`) calls `own_process` first:
from then on a method's imports run with the collector paused and what they leave is frozen
(`gc.freeze`: later collections skip it), and `at_exit` freezes everything before the
interpreter shuts down. A program that imports reverie (the Python API, a notebook, the tests)
keeps its collector as it was: a freeze would keep its own unreachable cycles alive.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

_owned = False


def own_process() -> None:
    """This process runs reverie alone, to its end: its big imports may be frozen."""
    global _owned
    _owned = True


@contextmanager
def long_lived() -> Iterator[None]:
    """Run imports whose objects stay for the process's life with the collector paused, then
    freeze everything alive, in a process that `own_process` claimed; elsewhere just run them."""
    if not _owned:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def at_exit() -> None:
    """The process is ending: spare the interpreter's shutdown its walk over every object."""
    if _owned:
        gc.freeze()
