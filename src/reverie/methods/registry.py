"""Every way of making pictures, found by its mode.

A method is a package under `methods/` whose `__init__.py` defines `METHOD = Method(...)`: its
name, the modes it serves, its request model and its `run(request, models, progress, outputs)`.
Registering one is one line in `PACKAGES`. The studio, the CLI, the job runner and the native
API all reach methods through `method_for` and `make_request`; none of them names a method.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from typing import Callable

from ..collector import long_lived
from ..errors import BadRequest
from ..request import BaseRequest

# One line per method package, in the order `reverie --help` and the docs list them.
PACKAGES = (
    "reverie.methods.diffusion",
    "reverie.methods.upscale",
    "reverie.methods.dreaming",
    "reverie.methods.style",
    "reverie.methods.gan",
    "reverie.methods.grid",
    "reverie.methods.video",
    "reverie.methods.training_lora",
)
DEFAULT_MODE = "txt2img"


@dataclass(frozen=True)
class Method:
    """One way of making pictures.

    `run(request, models, progress, outputs) -> Result`: `request` is an instance of `request`
    (already validated), `models` the shared `ModelCache`, `progress` a `Progress` to report to
    and to ask whether to stop, `outputs` where finished pictures are written as they come.
    """

    name: str
    modes: tuple[str, ...]
    request: type[BaseRequest]
    run: Callable
    # Dynamic batching, for a method that can share forward passes between requests:
    # `batch_key(request)` is equal (and not None) for requests that can run together, and
    # `run_shared(shares, models, limit)` runs a list of `Share`s, passes of at most `limit`
    # pictures, each request's pictures exactly as it makes them alone.
    batch_key: Callable | None = None
    run_shared: Callable | None = None
    # `run_module(request)`: the module of the package that `run` runs this request
    # with, when that is not always `run` (`import_run` imports it ahead of the run).
    run_module: Callable | None = None
    # `refusal(request)`: the BadRequest `run` would stop this request with before any
    # work, where that can be found without loading a model, else None (a grid asks it of every
    # cell before the first starts).
    refusal: Callable | None = None


@dataclass
class Share:
    """One request's part in a shared run: its progress, where its pictures go, and, once run,
    its result, or the error that ended it alone (the others go on)."""

    request: BaseRequest
    progress: object  # progress.Progress
    outputs: object  # outputs.files.Outputs
    result: object = None  # result.Result
    error: Exception | None = None
    stopped: bool = False  # it asked to stop; the result holds what was finished before


@cache
def methods() -> dict[str, Method]:
    """{mode: method} over every registered package."""
    by_mode: dict[str, Method] = {}
    for package in PACKAGES:
        method = _method_of(package)
        for mode in method.modes:
            if mode in by_mode:
                raise RuntimeError(f"mode {mode!r} is served by both {by_mode[mode].name} and {method.name}")
            by_mode[mode] = method
    return by_mode


def modes() -> list[str]:
    return list(methods())


def import_runs() -> None:
    """Import every method's `run` module, and torch and diffusers behind them, now, in this
    thread. Registering a method imports only its request (no torch: a front end that queues
    jobs for other machines never needs it); a process about to run jobs from several threads
    calls this first, since diffusers' lazy imports fail when two threads race through them.
    A package small enough to keep its run in `__init__.py` has nothing more to import. The
    imports' objects are kept as long-lived ones (collector.py)."""
    with long_lived():
        for package in PACKAGES:
            _import_run(package)


def import_run(mode: str, request: BaseRequest | None = None) -> None:
    """Import the module the method serving `mode` runs `request` with (its `run` module, or the
    one its `run_module` names for it) now, if it is not yet, its objects kept as long-lived ones
    (collector.py); the method would import it on its first run."""
    package = _package_for(mode)
    method = _method_of(package)
    module = method.run_module(request) if request is not None and method.run_module else "run"
    with long_lived():
        _import_run(package, module)


def _import_run(package: str, module: str = "run") -> None:
    name = f"{package}.{module}"
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        importlib.import_module(name)


@cache
def _method_of(package: str) -> Method:
    return importlib.import_module(package).METHOD


def _package_for(mode: str) -> str:
    """The package of the method serving `mode`. Packages are imported in order only until one
    serves it, so a txt2img request never imports dreaming, style transfer or video (seconds of
    imports on a cold start); `methods()` imports them all and checks that no mode is served twice."""
    for package in PACKAGES:
        if mode in _method_of(package).modes:
            return package
    raise BadRequest("mode", f"unknown mode {mode!r}; use one of {', '.join(modes())}")


def method_for(mode: str) -> Method:
    """The method serving `mode` (BadRequest naming the modes there are, for one none serves)."""
    return _method_of(_package_for(mode))


def refusal(request: BaseRequest):
    """What its method's `refusal` answers for `request` (a BadRequest `run` would stop it with
    before any work), None for a method without one."""
    check = method_for(request.mode).refusal
    return check(request) if check is not None else None


def make_request(fields: dict | BaseRequest | None = None, **more) -> BaseRequest:
    """A validated request for the method its `mode` names (txt2img when none)."""
    if isinstance(fields, BaseRequest):
        return fields.model_copy(update=more) if more else fields
    fields = dict(fields or {}) | more
    fields.setdefault("mode", DEFAULT_MODE)
    return method_for(fields["mode"]).request.build(**fields)
