"""Running a Stable Diffusion UNet on OpenVINO's CPU runtime instead of torch (issue 22).

`runtime` is a request field: `torch`, `openvino`, or `auto` (OpenVINO when the `openvino`
package is importable, the device is the CPU, the dtype fp32 or bf16 (bf16 on x86-64 only:
OpenVINO computes it nowhere else), the UNet SD's, SDXL's or reverie-mini's, read from a file
or folder, and the request asks for nothing that changes the UNet's weights or layers as it runs:
LoRAs, seamless tiles; else torch: `resolve_runtime`). A request that asks for `openvino` and
LoRAs runs an export of its own: the UNet traced with those LoRAs on at those weights (a
variant of the model's entry, `OpenVINOUNet.for_variant`); the model's own export is then
made only if one of its batches runs without LoRAs (`OpenVINOUNet.named`, then `ready`).

The UNet is exported once per model to OpenVINO's IR (`ov.convert_model` on the torch UNet,
with dynamic batch, latent size and prompt length), saved under the cache folder
(`$REVERIE_CACHE/openvino/<key>/`, default ~/.cache/reverie), keyed by where the weights came
from (the checkpoint file's or folder's size and modification time, else a hash of the
weights), the UNet's dtype and the versions that made it. The IR keeps the torch UNet's own
weights, in its dtype (no fp16 compression): an fp32 UNet's export computes in f32, its
pictures those of the fp32 torch UNet up to OpenVINO's kernels' rounding; a bf16 UNet's (`dtype
bf16`, `auto` on a CPU with native bf16) computes in bf16 (`INFERENCE_PRECISION_HINT`), as the
torch UNet would, with OpenVINO's own bf16 kernels (its attention about twice torch's speed on
avx512_bf16). Each input shape is then compiled on its own (static shapes run faster than
dynamic ones); the most recently used shapes stay compiled (COMPILED_BYTES' worth, two at
least), and a small export (reverie-mini's) keeps its compiled shapes on disk beside it too,
for the next process (OpenVINO's model cache: loading one takes half the time of compiling
it). An entry that cannot be read (a crash midway through an export, a damaged file) is
exported again, never used; an export that fails (`ExportFailed`) is not tried again in the
process, and `auto` runs that model on torch. A new export of a model file or folder
replaces the entries made earlier for the same path and dtype (the file changed since, or
reverie, torch or OpenVINO did): each is the size of the UNet's weights, and nothing would
read it again; so do partial exports abandoned hours ago by a process that died. (Two
installs of reverie with other versions, sharing one cache folder, would therefore export in
turn; give each its own `$REVERIE_CACHE`.)

`OpenVINOUNet` is called as diffusers calls a UNet2DConditionModel (`sample, timestep,
encoder_hidden_states, timestep_cond` (LCM's guidance embedding), `added_cond_kwargs` (SDXL's
pooled text and time ids), `return_dict`)
and answers with an object with `.sample` (or a tuple), so diffusers' pipelines run it unchanged;
attributes it does not have (its `config`, ...) are the torch UNet's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import platform
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from ..device import available_memory
from ..host import is_x86
from ..errors import BadRequest
from ..outputs.files import one_process_at_a_time, partial_folder
from . import openvino_bundle
from .openvino_bundle import (DONE_NAME, UNET_IR_NAME, compile_ir, cut_in_two, fingerprint_of, infer, infer_halves,
                              openvino_cache_dir, unet_export_made)
from .openvino_step_cache import SHALLOW, VIEWS, CachedUNet

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino")
EXPORT_FORMAT = 2  # bump when the exported graph changes (inputs, wrapper)
# `auto` exports UNets this big: SD 1.x (860M) and reverie-mini (17.2M), whose steps OpenVINO
# runs in 35 ms against torch's 55 (batch 8 at 16x16 latents, bf16). Toy UNets (the tests')
# stay on torch: an export and a compile per shape would cost more than their steps.
AUTO_MIN_PARAMETERS = 10_000_000
# `auto` takes OpenVINO only with this many times the UNet's bytes free (`free_bytes`): on the
# first request the torch UNet and its export are in memory at once, then the torch UNet leaves
# while the export serves (methods/diffusion/run.py). Measured in a fresh process, SD 1.5 in
# fp32, a 2-step 512 px picture (benchmarks/first_request_memory.py, two runs): 6.78-7.13 GiB
# peak with the export made and compiled, 5.71-5.81 on torch: OpenVINO's first request takes
# 0.3-0.44 times the UNet's 3.2 GiB above torch's own.
# (It was 3 while the export traced the UNet twice: 11.8-12.6 GiB then.)
AUTO_MEMORY_FACTOR = 2
# Input shapes kept compiled at once, each holding its own copy of the weights: as many as fit
# in COMPILED_BYTES, and at least COMPILED_SHAPES (SD 1.5's two take 3.4 GiB in bf16; mini's 34
# MB ones fit fifteen, for the studio's shared passes, whose batch size changes as jobs come and go).
COMPILED_SHAPES = 2
COMPILED_BYTES = 512 * 2**20
# An export that small also keeps its compiled shapes on disk (`COMPILED_DIR` beside it: a
# fresh process loads one in half the time it takes to compile), the newest STORED_SHAPES of them.
COMPILED_DIR = "compiled"
STORED_SHAPES = 16
EXPORT_DISK_MARGIN = 1.1  # free disk an export wants, in the UNet's weight bytes (the IR's .bin, its graph, room)
# A model's LoRA sets exported (`for_variant`) kept on disk beside its own export, the newest
# made: each is the UNet's size (1.7 GB for SD 1.5 in bf16), and every new weight is another.
VARIANTS_KEPT = 2
ABANDONED_AFTER_S = 6 * 3600  # a partial export this old was left by a process that died (an export takes minutes)
IR_NAME = UNET_IR_NAME


def openvino_available() -> bool:
    """Whether the `openvino` package can be imported (it is optional: requirements-speed.txt)."""
    return importlib.util.find_spec("openvino") is not None


def why_not_openvino(device: torch.device, dtype: torch.dtype, *, tile: bool = False,
                     odd_latents: bool = False,
                     cast_weights: bool = False) -> str | None:
    """Why OpenVINO cannot run this request's UNet, or None when it can."""
    if not openvino_available():
        return "the openvino package is not installed (pip install -r requirements-speed.txt)"
    if device.type != "cpu":
        return f"OpenVINO runs on the CPU here, and this request runs on {device.type}"
    if dtype not in (torch.float32, torch.bfloat16):
        return "OpenVINO runs the UNet in fp32 or bf16 only (use dtype fp32, bf16 or auto)"
    if dtype == torch.bfloat16 and not is_x86():
        return f"OpenVINO computes bf16 on x86-64 CPUs only, and this one is {platform.machine()} (use dtype fp32)"
    if tile:
        return "seamless tiles change the UNet's padding as it runs; only torch can"
    if cast_weights:
        return "the export holds fp32 weights, and this request keeps them in 16 bits (--weights); only torch can"
    if odd_latents:
        # The export traces diffusers' "upsample to the skip connection's size" branch as not taken.
        return "the picture's sides are not multiples of the UNet's own downsampling (64 px for SD)"
    return None


def resolve_runtime(name: str, device: torch.device, dtype: torch.dtype, *, parameters: int = AUTO_MIN_PARAMETERS,
                    from_file: bool = True, free_bytes: int | None = None, loras: bool = False,
                    loras_exported: Callable[[], bool] | None = None,
                    export_blocked: Callable[[], str | None] | None = None, **request) -> str:
    """`torch` or `openvino` for a request asking for `name` (auto, torch, openvino); asking for
    openvino where it cannot run is a BadRequest that says why. `auto` takes OpenVINO only for
    UNets of at least AUTO_MIN_PARAMETERS `parameters` (SD's and reverie-mini's), where its speed
    pays for the export, and only with the memory for it (`free_bytes`), for models read from a
    file or folder (`from_file`): a model in memory is being trained, and each change of its
    weights would be another export, named by their hash. Toy models stay on torch.
    `export_blocked` (the function of that name), asked last since it reads the cache and the
    disk, says why the export cannot be had: it failed before, or would not fit on disk.
    A request with `loras` runs on OpenVINO only when it asks for it: its UNet, the LoRAs on at
    their weights, is an export of its own (minutes and the UNet's size on disk for SD, once
    per LoRA set), which auto does not make unasked; but where `loras_exported` (asked only
    then) says that every LoRA set the request runs has its export made already, by an earlier
    request that asked for openvino, auto takes it as it would without LoRAs."""
    if name == "torch":
        return "torch"
    reason = why_not_openvino(device, dtype, **request)
    if name == "auto" and not reason:
        if parameters < AUTO_MIN_PARAMETERS or not from_file or (loras and not (loras_exported and loras_exported())):
            return "torch"
        if free_bytes is not None and free_bytes < parameters * dtype.itemsize * AUTO_MEMORY_FACTOR:
            return "torch"  # the export and the compiled copy beside the torch UNet would not fit
    if not reason and export_blocked is not None:
        reason = export_blocked()
        if reason and name == "auto":
            log.warning("runtime auto runs torch: %s", reason)
    if name == "openvino" and reason:
        raise BadRequest("runtime", f"openvino cannot run this request: {reason}; use --runtime torch or auto")
    return "torch" if reason else "openvino"


# ----------------------------------------------------------------------------- the cache


def _file_stamp(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def weights_fingerprint(unet, source: str = "", variant: dict | None = None) -> str:
    """What identifies the UNet's weights: the source file's (or folder's weight files') path,
    size and modification time when it came from disk, else a hash of its tensors (LoRA
    adapters loaded on it left out: `variant` names those that run); with the UNet's config and
    dtype, the versions that make the export, and the `variant` (`for_variant`) it runs."""
    return fingerprint_of(fingerprint_parts(unet, source), variant)


def fingerprint_parts(unet, source: str = "") -> dict:
    """What `weights_fingerprint` hashes but the variant: plain JSON, so a model's bundle keeps
    it (models/sd_bundle.py) and names its LoRA sets' exports without torch (`fingerprint_of`)."""
    import diffusers
    import openvino

    parts: dict = {"format": EXPORT_FORMAT, "openvino": openvino.__version__, "torch": torch.__version__,
                   "diffusers": diffusers.__version__, "dtype": str(unet.dtype),
                   "config": {key: value for key, value in json.loads(json.dumps(dict(unet.config), default=str)).items()
                              if not key.startswith("_")}}  # diffusers' `_use_default_values` comes in any order
    if guidance_width(unet.config) is not None:
        # Made before the export took LCM's guidance embedding, its graph had no such input.
        parts["inputs"] = "timestep_cond"
    path = _source_path(source)
    if path is not None and path.is_file():
        parts["file"] = _file_stamp(path)
    elif path is not None:
        parts["files"] = [_file_stamp(f) for f in sorted((path / "unet").iterdir()) if f.is_file()]
    else:
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in unet.state_dict().items():
            if ".lora_" in name:
                continue  # PEFT's adapters: the variant says which run, and at what weight
            digest.update(name.replace(".base_layer.", ".").encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        parts["weights"] = digest.hexdigest()
    return parts


def _source_path(source: str) -> Path | None:
    """The checkpoint file or diffusers folder (with a `unet/`) the UNet was loaded from, if any."""
    path = Path(source) if source else None
    if path is not None and (path.is_file() or (path.is_dir() and any((path / "unet").glob("*")))):
        return path.resolve()
    return None


def reloadable(source: str) -> bool:
    """Whether the UNet's weights can be read again from where they came from (a checkpoint file
    or a diffusers folder), so that its torch copy may leave memory while its export serves."""
    return _source_path(source) is not None


class ExportFailed(RuntimeError):
    """The UNet could not be exported to OpenVINO (or its export read back); `export_blocked`
    gives the reason to every later request of the process, which `auto` then runs on torch."""


_failed_exports: dict[Path, str] = {}  # cache entries whose export failed in this process, and why


def export_blocked(unet, source: str = "", cache: Path | None = None, variant: dict | None = None) -> str | None:
    """Why the UNet's export cannot be had, or None: it failed earlier in this process (it
    would fail again, and take as long), or, not made yet, it would not fit in free memory
    (AUTO_MEMORY_FACTOR times the UNet's bytes) or on the cache folder's
    disk. Neither is asked for UNets not read from a file (their fingerprint would hash every
    weight; such models are small or being trained)."""
    cache = cache or openvino_cache_dir()
    if _failed_exports:
        failed = _failed_exports.get(cache / weights_fingerprint(unet, source, variant))
        if failed:
            return f"its export failed earlier in this process ({failed})"
    if not reloadable(source) or OpenVINOUNet.exported(unet, source, cache, variant):
        return None
    return no_room_to_export(unet, cache)


def no_room_to_export(unet, cache: Path | None = None) -> str | None:
    """Why an export of `unet` would not fit now, or None: it needs AUTO_MEMORY_FACTOR times its
    weights' bytes of free memory, and EXPORT_DISK_MARGIN times them free on the disk of `cache`
    (default the OpenVINO cache folder). For `export_blocked`, and for the bundles' exports of
    the UNet with circular padding (openvino_bundle.make_tile_parts)."""
    cache = cache or openvino_cache_dir()
    weights = sum(p.numel() for name, p in unet.named_parameters() if ".lora_" not in name) * unet.dtype.itemsize
    memory = available_memory(torch.device("cpu"))
    if memory < weights * AUTO_MEMORY_FACTOR:
        return (f"its export needs about {weights * AUTO_MEMORY_FACTOR / 2**30:.1f} GiB of free memory, and "
                f"{memory / 2**30:.1f} GiB is")
    need = weights * EXPORT_DISK_MARGIN
    free = shutil.disk_usage(next(folder for folder in (cache, *cache.parents) if folder.exists())).free
    if free >= need:
        return None
    return (f"its export needs about {need / 1e9:.1f} GB free in {cache}, and {free / 1e9:.1f} GB is (free some "
            "disk, or set REVERIE_CACHE to a folder on a larger one)")


def drop_replaced(folder: Path) -> list[Path]:
    """Remove the cache entries beside `folder` made for the same source path, dtype and variant
    label as it (older exports of that model: see the module docstring; the model's own export
    and its LoRA variants stay side by side, the newest VARIANTS_KEPT of these), and partial
    exports abandoned by a
    process that died midway (killed for memory: an export's peak is several times the UNet's
    size); the folders removed."""
    removed = []
    for entry in folder.parent.glob("*.partial-*"):
        try:
            if time.time() - entry.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        except OSError:
            continue
    try:
        made = json.loads((folder / DONE_NAME).read_text())
    except (OSError, ValueError):
        return removed
    if not made.get("source"):
        return removed  # weights that came from no file: their entry is named by their hash alone
    variants = []
    for entry in folder.parent.iterdir():
        if entry == folder or not entry.is_dir() or entry in removed:
            continue
        try:
            other = json.loads((entry / DONE_NAME).read_text())
            run_at = (entry / DONE_NAME).stat().st_mtime_ns  # made, or last run (`load`)
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict):
            continue
        if _same_model(other, made):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif made.get("label") and other.get("label") and _same_model(other, made, keys=("source", "dtype")):
            variants.append((run_at, entry))  # another LoRA set of the model
    for _, entry in sorted(variants, reverse=True)[max(0, VARIANTS_KEPT - 1):]:  # the least recently run
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        log.info("removed %d older OpenVINO export(s) of %s", len(removed), made["source"])
    return removed


def _same_model(entry: dict, made: dict, keys: tuple[str, ...] = ("source", "dtype", "label")) -> bool:
    """Whether two entries' markers name one model file, dtype and variant (the LoRAs by name and
    weight: a LoRA file changed since is the same variant, exported again); with `keys`
    ("source", "dtype"), one model file and dtype, whatever their variants."""
    return all(entry.get(key) == made.get(key) for key in keys)


class TraceableUNet(torch.nn.Module):
    """The UNet as a plain function of fp32 tensors, for the exporter: it computes in the UNet's
    own dtype and answers in fp32 (the export's inputs and output are f32 whatever the weights'
    dtype). Guidance-distilled UNets (LCM's: `time_cond_proj_dim`) take the guidance scale's
    embedding next, diffusers' `timestep_cond`; SDXL's UNets (`addition_embed_type` "text_time")
    take two more: the pooled text embedding and the size/crop (or aesthetic score) time ids,
    diffusers' `added_cond_kwargs`."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, *more):
        dtype = self.unet.dtype
        extra = {}
        if guidance_width(self.unet.config) is not None:
            extra["timestep_cond"], *more = more
            extra["timestep_cond"] = extra["timestep_cond"].to(dtype)
        if more:
            text_embeds, time_ids = more
            extra["added_cond_kwargs"] = {"text_embeds": text_embeds.to(dtype), "time_ids": time_ids.to(dtype)}
        return self.unet(sample.to(dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(dtype),
                         return_dict=False, **extra)[0].float()


def guidance_width(config) -> int | None:
    """The width of a guidance-distilled UNet's guidance-scale embedding (LCM's
    `time_cond_proj_dim`, diffusers' `timestep_cond`), None for a UNet without one."""
    width = getattr(config, "time_cond_proj_dim", None)
    return int(width) if width else None


def added_inputs(config) -> tuple[int, int] | None:
    """(pooled text width, time ids) of an example for an SDXL UNet's added inputs (its
    `added_cond_kwargs`), None for a UNet without them. The config gives their sum only
    (`projection_class_embeddings_input_dim`: the width plus the ids times
    `addition_time_embed_dim`); the export keeps both sizes dynamic, so any split of it traces
    the same graph: six ids (the base's size and crop), or five (the refiner's) where six leave
    no width."""
    if getattr(config, "addition_embed_type", None) != "text_time":
        return None
    total, per_id = int(config.projection_class_embeddings_input_dim), int(config.addition_time_embed_dim)
    ids = 6 if total > 6 * per_id else 5
    return total - ids * per_id, ids


def convert_to_openvino(module: torch.nn.Module, example: tuple, inputs: list):
    """`module` traced on `example` and converted to an OpenVINO model with `inputs` ([shape,
    type] each, -1 a size left dynamic: the graph traced on a small example serves any)."""
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on diffusers' shape checks: the graph keeps the shapes dynamic.
        warnings.simplefilter("ignore")
        # torch.jit.trace's own check (tracing again and comparing the two graphs' outputs)
        # took 90 of SD 1.5's 140 s export in fp32; the pictures are checked against torch's
        # in tests/test_speed_runtime.py instead.
        traced = TorchScriptPythonDecoder(module.eval(), example_input=example, trace_kwargs={"check_trace": False})
        return ov.convert_model(traced, example_input=example,
                                input=[(ov.PartialShape(shape), kind) for shape, kind in inputs])


def unet_part(unet) -> tuple:
    """What convert_to_openvino exports the UNet from: (its TraceableUNet, an example, the
    inputs' shapes and types: every size dynamic but the channels)."""
    import openvino as ov

    config = unet.config
    channels, states = int(config.in_channels), int(config.cross_attention_dim)
    # The example the tracer runs: the graph it records keeps every size dynamic, so the smallest
    # latents whose deepest features are still 2x2 (16x16 for SD, 128 px) record the same one
    # as 64x64 would, in a fraction of the time.
    side = min(int(config.sample_size), 2 ** len(config.block_out_channels))
    example = (torch.randn(2, channels, side, side), torch.tensor(999.0), torch.randn(2, 77, states))
    inputs = [([-1, channels, -1, -1], ov.Type.f32), ([], ov.Type.f32), ([-1, -1, states], ov.Type.f32)]
    guidance = guidance_width(config)
    if guidance is not None:  # LCM's guidance-scale embedding, [batch, width]
        example += (torch.randn(2, guidance),)
        inputs += [([-1, guidance], ov.Type.f32)]
    added = added_inputs(config)
    if added is not None:  # SDXL: the pooled text and the time ids, [batch, width] and [batch, ids]
        example += (torch.randn(2, added[0]), torch.full((2, added[1]), 1024.0))
        inputs += [([-1, -1], ov.Type.f32), ([-1, -1], ov.Type.f32)]
    return TraceableUNet(unet), example, inputs


def export_unet(unet, folder: Path, source: str = "", label: str | None = None) -> None:
    """Write the UNet as OpenVINO IR (its weights in its own dtype; LoRA adapters as they are on)
    into `folder`, atomically: a folder appears complete, with its `done.json` (what it was made
    from: the source, dtype and the variant's `label`), or not at all."""
    import openvino as ov

    started = time.perf_counter()
    with partial_folder(folder) as partial:
        model = convert_to_openvino(*unet_part(unet))
        ov.save_model(model, str(partial / IR_NAME), compress_to_fp16=False)
        del model
        bin_path = (partial / IR_NAME).with_suffix(".bin")
        path = _source_path(source)
        (partial / DONE_NAME).write_text(json.dumps({"bin_bytes": bin_path.stat().st_size,
                                                     "export_s": round(time.perf_counter() - started, 1),
                                                     "source": str(path) if path else None, "dtype": str(unet.dtype),
                                                     "label": label}))
    log.info("exported the UNet to OpenVINO in %.1f s: %s", time.perf_counter() - started, folder)


def _keep_newest(folder: Path, count: int) -> None:
    """Remove all but the `count` newest files of `folder` (compiled shapes OpenVINO stored)."""
    try:
        files = sorted((f for f in folder.iterdir() if f.is_file()), key=lambda f: f.stat().st_mtime_ns, reverse=True)
    except OSError:
        return
    for old in files[count:]:
        old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the UNet


class OpenVINOUNet:
    """A UNet2DConditionModel's stand-in that runs its OpenVINO export (see the module docstring).

    `exports` counts the exports this object made (0 when the cache had it), `compiles` the
    shapes it compiled. A model's export may have a variant (`for_variant`: its UNet with LoRAs
    on); the two never hold compiled shapes at once."""

    def __init__(self, unet, folder: Path, source: str = "", variant: dict | None = None):
        self._torch_config = unet.config
        self.config = unet.config
        if added_inputs(unet.config) is not None:  # diffusers' SDXL pipelines check their time ids' width by it
            width = int(unet.config.projection_class_embeddings_input_dim)
            self.add_embedding = SimpleNamespace(linear_1=SimpleNamespace(in_features=width))
        self.dtype = unet.dtype
        self.device = torch.device("cpu")
        self.folder = folder
        self.source = source
        self.variant = variant
        self.exports = 0
        self.compiles = 0
        self._compiled: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._core = None  # OpenVINO's, once the export is made and read (`ready`)
        self._cached: CachedUNet | None = None  # the sampling run's step cache (`step_cached`)
        self._sibling: OpenVINOUNet | None = None  # the variant last run, or for a variant its base
        # What the export will weigh, for the model cache before it is made (LoRA adapters are not exported)
        self._unet_bytes = sum(p.numel() for name, p in unet.named_parameters() if ".lora_" not in name) \
            * unet.dtype.itemsize if isinstance(unet, torch.nn.Module) else 0

    @staticmethod
    def exported(unet, source: str = "", cache: Path | None = None, variant: dict | None = None) -> bool:
        """Whether the UNet's export is in the cache already (`load` would not need its weights)."""
        return unet_export_made((cache or openvino_cache_dir()) / weights_fingerprint(unet, source, variant))

    @classmethod
    def load(cls, unet, source: str = "", cache: Path | None = None, variant: dict | None = None) -> "OpenVINOUNet":
        """The UNet's export from the cache, made first when missing or unreadable. `variant`
        (with a `label`) names what else runs in `unet` as it is now: LoRAs on, at their weights."""
        return cls.named(unet, source, cache, variant).ready(unet)

    @classmethod
    def named(cls, unet, source: str = "", cache: Path | None = None, variant: dict | None = None) -> "OpenVINOUNet":
        """The stand-in for the UNet's export, neither made nor read yet: `ready` does that when
        it is first needed (a request whose batches all run LoRAs never needs the model's own)."""
        return cls(unet, (cache or openvino_cache_dir()) / weights_fingerprint(unet, source, variant), source, variant)

    @property
    def is_ready(self) -> bool:
        """Whether the export is made and read (`ready`)."""
        return self._core is not None

    def ready(self, unet) -> "OpenVINOUNet":
        """This export, made from the torch `unet` first when missing or unreadable, then read;
        an export that fails is an `ExportFailed` (and `export_blocked` says so from then on)."""
        with self._ready_lock:
            if self._core is not None:
                return self
            folder, label = self.folder, (self.variant or {}).get("label")
            try:
                if not unet_export_made(folder):
                    with one_process_at_a_time(folder):  # another worker exporting it: wait, then find it made
                        if not unet_export_made(folder):
                            export_unet(unet, folder, self.source, label)
                            self.exports += 1
                try:
                    self._read()
                except Exception as exc:  # a damaged entry with a good marker: export again, once
                    log.warning("the OpenVINO export in %s could not be read (%s); exporting it again", folder, exc)
                    export_unet(unet, folder, self.source, label)
                    self.exports += 1
                    self._read()
            except Exception as exc:  # the exporter meets a layer it cannot trace, a full disk, ...
                _failed_exports[folder] = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("the UNet could not be exported to OpenVINO: %s", _failed_exports[folder])
                raise ExportFailed(_failed_exports[folder]) from exc
            if self.exports:
                drop_replaced(folder)
            elif self.variant:
                (folder / DONE_NAME).touch()  # run now: the variants kept are the most recently run
        return self

    def for_variant(self, unet, variant: dict | None,
                    exporting: Callable[[str | None], None] | None = None) -> "OpenVINOUNet":
        """The export that runs the torch `unet` as it is now, LoRAs on (`variant`, from
        `lora.lora_variant`; None: this export itself, made and read first if it was only
        `named`): this model's variant, exported once into a cache entry of its own beside the
        model's and read from there by later processes; `exporting` is told its label (None
        for the model's own) first when it is to be made. The last variant
        run is kept (a batch with the same LoRAs finds it without reading the cache); it and
        the model's export take turns holding compiled shapes (each SD 1.5 shape holds the
        UNet's weights again). An export that fails or would not fit in memory or on disk is
        an `ExportFailed` with the reason."""
        cache = self.folder.parent
        if not variant:
            if not self.is_ready:
                self._check_and_announce(unet, cache, None, exporting)
            return self.ready(unet)
        with self._lock:
            kept = self._sibling
            if kept is not None and kept.variant == variant:  # the same LoRA files at the same weights
                return kept
            self._check_and_announce(unet, cache, variant, exporting)
            made = OpenVINOUNet.load(unet, self.source, cache, variant)
            made._sibling = self
            self._sibling = made
            return made

    def _check_and_announce(self, unet, cache: Path, variant: dict | None,
                            exporting: Callable[[str | None], None] | None) -> None:
        """Before `unet`'s export (`variant`'s) is had: an `ExportFailed` when it cannot be
        (`export_blocked`), and `exporting` told its label when it is to be made."""
        blocked = export_blocked(unet, self.source, cache, variant)
        if blocked:
            raise ExportFailed(blocked)
        if exporting is not None and not OpenVINOUNet.exported(unet, self.source, cache, variant):
            exporting((variant or {}).get("label"))

    def _read(self):
        import openvino as ov

        self._core = ov.Core()
        if self.stores_compiled:
            self._core.set_property({"CACHE_DIR": str(self.folder / COMPILED_DIR)})
        model = self._core.read_model(str(self.folder / IR_NAME))
        self._inputs = [port.get_any_name() for port in model.inputs]
        del model

    def _compiled_for(self, shapes: tuple, part: str = "unet", streams: int = 1):
        """The compiled model and its requests, one per stream, for input `shapes`: of the
        export, or of a view of it (`part`: the step cache's split, models/openvino_step_cache.py)."""
        if self._core is None:
            raise RuntimeError(f"the OpenVINO export {self.folder.name} is not made yet (`ready` it first)")
        # SDXL's added conditions given to another UNet's export, or missing (the shallow part
        # takes the deep features too)
        if len(shapes) - (part == SHALLOW) != len(self._inputs):
            raise NotImplementedError(f"the OpenVINO export {self.folder.name} takes {len(self._inputs)} inputs, "
                                      f"and was given {len(shapes)}")
        threads = torch.get_num_threads()
        key = (part, shapes, threads, streams)
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
            if self._sibling is not None:
                self._sibling._compiled.clear()  # the model's export or its variant: one at a time
            while self._compiled and len(self._compiled) >= self.shapes_kept:
                self._compiled.popitem(last=False)
            # The UNet's own precision (`precision`), one stream (two for a large export's halves,
            # `run_part`), on as many threads as torch has (OMP_NUM_THREADS: a deployment's
            # workers share the cores), all streams together.
            compiled = compile_ir(self._core, self.folder / IR_NAME, shapes, self.precision, streams, threads,
                                  VIEWS[part][1] if part != "unet" else None)
            requests = [compiled.create_infer_request() for _ in range(streams)]
            self._compiled[key] = (compiled, requests)
            self.compiles += 1
            if self.stores_compiled:
                _keep_newest(self.folder / COMPILED_DIR, STORED_SHAPES)
            return compiled, requests

    def __call__(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                 added_cond_kwargs=None, return_dict: bool = True, **extra):
        if any(v is not None for v in extra.values()):
            raise NotImplementedError("the OpenVINO UNet takes a sample, a timestep, text states, LCM's guidance "
                                      "embedding and SDXL's added conditions only")
        added = tuple(added_cond_kwargs[name] for name in ("text_embeds", "time_ids")) if added_cond_kwargs else ()
        if timestep_cond is not None:
            added = (timestep_cond, *added)
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        if t.numel() > 1 and not torch.equal(t, t[:1].expand_as(t)):
            raise NotImplementedError("the OpenVINO UNet takes one timestep for the whole batch")
        inputs = (sample.detach().to(torch.float32).contiguous().numpy(), t[0].reshape(()).numpy(),
                  *(x.detach().to(torch.float32).contiguous().numpy() for x in (encoder_hidden_states, *added)))
        out = self._cached(*inputs) if self._cached is not None else self.run_part("unet", *inputs)
        out = torch.from_numpy(out).to(sample.dtype)
        return SimpleNamespace(sample=out) if return_dict else (out,)

    def run_part(self, part: str, *inputs, every_output: bool = False):
        """The export's output for NumPy `inputs` (`every_output`: all its outputs), or a view's
        (`part`: models/openvino_step_cache.py's); an export of SPLIT_BYTES or more runs an even
        batch as two halves at once, one stream each, as the bundle's UNet does."""
        split = self.export_bytes >= openvino_bundle.SPLIT_BYTES and torch.get_num_threads() >= 2
        halves = cut_in_two(inputs) if split else None
        if halves is None:
            return infer(self._compiled_for(tuple(tuple(x.shape) for x in inputs), part)[1][0], inputs, every_output)
        _, requests = self._compiled_for(tuple(tuple(x.shape) for x in halves[0]), part, streams=2)
        return infer_halves(requests, halves, every_output)

    @contextmanager
    def step_cached(self, interval: int):
        """Step caching every `interval` evaluations inside the block (models/step_cache.py's
        `step_cache` for this stand-in: the export split, models/openvino_step_cache.py); yields
        the schedule (None at 1)."""
        if self._cached is not None:
            raise RuntimeError("step_cache: the UNet is already patched (a step cache inside another?)")
        self._cached = CachedUNet(self.run_part, interval)
        try:
            yield self._cached.schedule
        finally:
            self._cached = None

    def forward(self, *args, **kwargs):
        return self(*args, **kwargs)

    def release_memory(self) -> None:
        """Let go of the compiled shapes' working memory (their activations), kept between calls
        otherwise; the weights stay compiled, and the next call allocates it again (milliseconds).
        Called after a batch's last step, so the VAE decode that follows does not stand on it:
        SD 1.5 at 512 px, four pictures, peaks 0.4 GiB lower (0.1 for one)."""
        with self._lock:
            for compiled, _ in self._compiled.values():
                compiled.release_memory()

    @property
    def precision(self) -> str:
        """OpenVINO's inference precision: bf16 weights compute in bf16, as the torch UNet would;
        fp32 ones in f32 whatever the CPU offers (OpenVINO would otherwise pick bf16 on a CPU
        that has it, and change the pictures)."""
        return "bf16" if self.dtype == torch.bfloat16 else "f32"

    @property
    def export_bytes(self) -> int:
        """The size of the exported weights: what each compiled shape holds, about."""
        try:
            return (self.folder / IR_NAME).with_suffix(".bin").stat().st_size
        except OSError:
            return self._unet_bytes  # not made yet: about the UNet's own

    @property
    def stores_compiled(self) -> bool:
        """Whether compiled shapes are kept on disk too (small exports: reverie-mini's 34 MB a
        shape; SD 1.5's would be 1.7 GB each)."""
        return 0 < self.export_bytes <= COMPILED_BYTES

    @property
    def shapes_kept(self) -> int:
        """How many compiled shapes are kept at once (COMPILED_BYTES' worth, at least COMPILED_SHAPES)."""
        return max(COMPILED_SHAPES, COMPILED_BYTES // max(1, self.export_bytes))

    @property
    def weight_bytes(self) -> int:
        """Bytes the compiled shapes hold (about the exported weights each; a variant's too),
        for the model cache."""
        held = self.export_bytes * max(1, sum(key[0] != SHALLOW for key in self._compiled))  # the split's is small
        if self._sibling is not None and self.variant is None:
            held += self._sibling.export_bytes * len(self._sibling._compiled)
        return held
