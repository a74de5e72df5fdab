"""A model's parts exported together to OpenVINO IR, in one folder, and run without torch (issue 22).

A bundle is a folder under the cache holding one IR (`<part>.xml` and `.bin`) per part of a
model (its text encoder, UNet, VAE decoder...) and a marker, `done.json`: each part's weights
size (a part whose .bin has another size is a damaged bundle: it is made again) and what the
runner needs to know about the model (its noise schedule, its tokenizer's special tokens, the
VAE's latent->RGB map for live previews...). `save_bundle` (which imports torch) writes one
atomically: a temporary folder renamed into place, or nothing. `OpenVINOBundle` runs the parts
with OpenVINO's CPU plugin alone: each input shape compiled on its own (static shapes run faster
than dynamic ones), in each part's precision, the part's mapped weights file let go as the
compile reads it (host.file_pages_dropped: OpenVINO computes with its own repacked copy).

models/mini_bundle.py makes reverie-mini's (text encoder, UNet, decoder, encoder, x2 upscaler);
models/sd_bundle.py makes a Stable Diffusion file's or folder's (text encoder, UNet, decoder, encoder).
methods/diffusion/compiled.py runs either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from ..host import file_pages_dropped
from ..outputs.files import partial_folder

DONE_NAME = "done.json"
COMPILED_DIR = "compiled"
TILE_DIR = "tile"
TILE_PARTS = ("unet", "decoder", "encoder")  # what `make_tile_parts` exports again, padding circularly
SHAPES_KEPT = 16  # compiled shapes of a small part held in a process (a batch size, a latent size each)
HELD_BYTES = 512 * 2**20  # a large part keeps as many compiled shapes as fit in this many weight bytes...
HELD_AT_LEAST = 2  # ...and two at least (SD 1.5's UNet: 1.7 GB a shape in bf16)
# A part this large runs an even batch as two halves at once, one OpenVINO stream each (half the
# cores each): SD 1.5's UNet on the CFG pair on 2 cores, 0.87 s a call against 0.99 at 256 px,
# 4.09 against 4.26 at 512, 15.9 against 16.3 at 768 (bf16; the weights shared, 80 MB more).
# The torch pipeline's OpenVINOUNet does the same with an export this large (SDXL's too).
SPLIT_BYTES = HELD_BYTES
# A text encoder this large (SDXL's bigG: 1.4 GB in bf16, 1.8 GiB compiled; SD 2's OpenCLIP-H)
# is let go once a batch's prompts are encoded (`forget`), not held through the steps and the
# decode: compiled again for the next prompts (bigG: 9 s, against minutes of SDXL's steps).
FORGET_TEXT_BYTES = HELD_BYTES
VERSIONED = ("openvino", "torch", "diffusers", "transformers")  # what exports a bundle: a new version makes it again


def openvino_cache_dir() -> Path:
    """Where OpenVINO exports and bundles live: `$REVERIE_CACHE/openvino`."""
    from .clip_tokenizer import cache_dir

    return cache_dir() / "openvino"


# The torch path's UNet exports (models/openvino_runtime.py), each a folder of the cache named
# by `fingerprint_of`; a bundle links its UNet's, and runs a LoRA set's in its place.
UNET_IR_NAME = "unet.xml"


def fingerprint_of(parts: dict, variant: dict | None = None) -> str:
    """The cache entry's name of an export: a UNet's `fingerprint_parts` (openvino_runtime.py),
    or what names a bundle's text encoder (sd_bundle.lora_text_encoder_folder), running
    `variant` (its LoRAs and their weights; None: the part's own)."""
    text = json.dumps(parts | ({"variant": variant} if variant else {}), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def unet_export_made(folder: Path) -> bool:
    """Whether a UNet export's cache entry is whole: its marker, and a weights file of the size
    it recorded."""
    try:
        done = json.loads((folder / DONE_NAME).read_text())
        ir = folder / UNET_IR_NAME
        return ir.is_file() and ir.with_suffix(".bin").stat().st_size == done["bin_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def precision_of(dtype: str) -> str:
    """OpenVINO's inference precision for a request's resolved dtype name (fp32 or bf16)."""
    return {"bf16": "bf16", "fp32": "f32"}[dtype]


def torch_dtype_of(precision: str):
    """The torch dtype a bundle of `precision` (bf16 or f32) is exported from (imports torch)."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bundle_path(prefix: str, format_version: int, precision: str, files: list[Path], cache: Path | None = None) -> Path:
    """Where a bundle lives (`$REVERIE_CACHE/openvino/<prefix>-<key>`): the key covers the
    bundle's format, its precision, the versions of what exports it (read from the installed
    packages' metadata: nothing is imported) and the path, size and modification time of each
    file it is made from."""
    parts = {"format": format_version, "precision": precision, "versions": {name: _version(name) for name in VERSIONED},
             "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
    key = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12).hexdigest()
    return (cache or openvino_cache_dir()) / f"{prefix}-{key}"


def part_ir(folder: Path, part: str) -> Path:
    """Where the bundle in `folder` keeps `part`'s IR (its weights beside it, .bin)."""
    return folder / f"{part}.xml"


def tile_folder(folder: Path) -> Path:
    """Where the bundle in `folder` keeps its UNet, decoder and encoder for seamless tiles
    (`make_tile_parts`): inside it, so that they go with it."""
    return folder / TILE_DIR


def bundle_made(folder: Path) -> bool:
    """Whether `folder` holds a whole bundle: its marker, and each part's weights of the size recorded."""
    try:
        sizes = json.loads((folder / DONE_NAME).read_text())["bin_bytes"]
        return bool(sizes) and all(part_ir(folder, part).with_suffix(".bin").stat().st_size == size
                                   and part_ir(folder, part).is_file() for part, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def bundle_facts(folder: Path) -> dict:
    """What the bundle's marker says (done.json); {} when it cannot be read."""
    try:
        return json.loads((folder / DONE_NAME).read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- making one (torch)


def save_bundle(folder: Path, parts: dict, facts: dict, replaces: str, extra_files: dict[str, str] | None = None) -> None:
    """Write a bundle into `folder`, atomically. `parts` maps each part's name to what it is made
    from: (module, example inputs, [(shape, OpenVINO type)] per input; -1 a dynamic size) to
    trace and convert, or the path of an IR (.xml, its .bin beside it) exported already, linked
    in (copied where it cannot be); `extra_files`, names and texts written beside them (a
    tokenizer). `facts` go into done.json with the parts' weight sizes. A
    bundle another process made meanwhile is kept. Then the other bundles beside it whose
    marker's `replaces` fact equals this one's (made from older files or by other versions of
    the same model, at the same precision) are removed: each is as large as its weights, and
    nothing would read it again."""
    import openvino as ov

    from .openvino_runtime import convert_to_openvino

    sizes = {}
    with partial_folder(folder, made=bundle_made) as partial:
        for name, made_from in parts.items():
            target = part_ir(partial, name)
            if isinstance(made_from, Path):
                for suffix in (".xml", ".bin"):
                    _link_or_copy(made_from.with_suffix(suffix), target.with_suffix(suffix))
            else:
                module, example, inputs = made_from
                ov.save_model(convert_to_openvino(module, example, inputs), str(target), compress_to_fp16=False)
            sizes[name] = target.with_suffix(".bin").stat().st_size
        for name, text in (extra_files or {}).items():
            (partial / name).write_text(text)
        (partial / DONE_NAME).write_text(json.dumps({"bin_bytes": sizes, **facts}))
    kind = facts[replaces]
    for old in folder.parent.iterdir():
        if old != folder and old.is_dir() and bundle_facts(old).get(replaces) == kind:
            shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """`source` at `target` too: a hard link (no second copy on disk: SD's UNet is 1.7 GB), or a
    copy where the two are on different file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def in_fp32(module, call=None):
    """`module` (run by `call(module, *inputs)`, or called) answering in fp32, for the exporter."""
    import torch

    class InFp32(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *inputs):
            return (call(self.inner, *inputs) if call else self.inner(*inputs)).float()

    return InFp32().eval()


def with_extra_rows(encoder, call):
    """A text encoder (run by `call(encoder, *inputs)`, giving a tensor or a tuple of them)
    answering in fp32 that takes one more input, last: rows [E, width] for the token ids past
    its own table (from `vocab` on, in order), as a textual-inversion embedding's vectors are
    its added tokens' rows. Its input table is wrapped in place: an encoder that is not the
    export's own copy gets it back from the caller (sd_bundle.export_lora_text_encoder)."""
    import torch

    from .embeddings import with_added_rows

    table = encoder.get_input_embeddings()
    vocab = int(table.num_embeddings)

    class Rows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.rows = table, None

        @property
        def weight(self):  # encoders read their table's weight for its dtype and device
            return self.table.weight

        def forward(self, ids):
            return with_added_rows(self.table, vocab, self.rows, ids)

    rows = Rows()
    encoder.set_input_embeddings(rows)

    class WithRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.added = encoder, rows

        def forward(self, *inputs):
            self.added.rows = inputs[-1]
            out = call(self.inner, *inputs[:-1])
            return tuple(x.float() for x in out) if isinstance(out, tuple) else out.float()

    return WithRows().eval()


def vae_parts(vae, dtype) -> dict:
    """What save_bundle exports a VAE's two parts from, the VAE computing in `dtype`: "decoder",
    latents -> pixels in [-1, 1] (unclamped), as the pipelines decode (latents / scaling_factor);
    "encoder", pixels in [-1, 1] -> the latents' mean and spread [1, 2C, h, w], scaled as the
    UNet sees them (`encoded_latents`)."""
    import openvino as ov
    import torch

    channels, scaling = int(vae.config.latent_channels), float(vae.config.scaling_factor)
    return {
        "decoder": (in_fp32(vae, lambda m, z: m.decode((z / scaling).to(dtype), return_dict=False)[0]),
                    (torch.randn(1, channels, 16, 16),), [([-1, channels, -1, -1], ov.Type.f32)]),
        "encoder": (in_fp32(vae, lambda m, x: encoded_latents(m, x.to(dtype), scaling)),
                    (torch.rand(1, 3, 64, 64) * 2 - 1,), [([-1, 3, -1, -1], ov.Type.f32)]),
    }


def make_tile_parts(folder: Path, unet, vae, dtype, facts: dict | None = None) -> None:
    """Export the torch `unet` and `vae` (its decoder and encoder) of the bundle in `folder` as
    the bundle's own parts are exported, but with every convolution padding circularly
    (models/seamless.py), into its `tile_folder`: run in those parts' places, they make seamless
    tiles (methods/diffusion/compiled.py). `facts` go into its marker (mini's upscaler's margin)."""
    from .openvino_runtime import unet_part
    from .seamless import circular_convolutions

    with circular_convolutions(unet, vae):
        save_bundle(tile_folder(folder), {"unet": unet_part(unet), **vae_parts(vae, dtype)},
                    {"tile_of": folder.name, **(facts or {})}, replaces="tile_of")


def encoded_latents(vae, pixels, scaling: float):
    """A VAE's encoding of `pixels` for img2img: its latent distribution's mean and standard
    deviation side by side on the channels, times the scaling factor (a sample of it is
    mean + std * noise, as diffusers' latent_dist.sample draws it, already scaled)."""
    import torch

    latents = vae.encode(pixels, return_dict=False)[0]
    return torch.cat([latents.mean, latents.std], dim=1) * scaling


# ----------------------------------------------------------------------------- running one (no torch)


def infer(request, inputs: tuple[np.ndarray, ...], every_output: bool = False) -> np.ndarray | list[np.ndarray]:
    """An OpenVINO infer request's first output for `inputs` (`every_output`: all, in order), copied out."""
    request.infer(dict(enumerate(inputs)))
    return _outputs(request, every_output)


def _outputs(request, every_output: bool) -> np.ndarray | list[np.ndarray]:
    if every_output:  # the model's own, not those `sinusoids_in_f32` added
        return [request.get_output_tensor(index).data.copy() for index, port in enumerate(request.model_outputs)
                if not any(name.startswith(F32_TAIL) for name in port.get_names())]
    return request.get_output_tensor(0).data.copy()


F32_TAIL = "reverie_f32_tail"  # the names of the outputs `sinusoids_in_f32` adds


def sinusoids_in_f32(model):
    """`model` (an ov.Model) with each Sin and Cos node's output added to its outputs, after its
    own (named F32_TAIL..., never read), for a bf16 compile. OpenVINO's CPU plugin computes in
    bf16 every node but a graph's tail: those between an output and the last convolutions or
    matrix products before it. A UNet's timestep embedding (sines and cosines of the timestep
    times frequencies up to 1) and SDXL's of its size ids (1024) then took a bf16 timestep: 999
    is 1000 in bf16, so the phases were off by up to radians and the embedding wrong where
    diffusers computes it in float32 (an SDXL-shaped UNet's output 9x further from fp32's than
    torch's bf16). As outputs, they and what leads to them from the inputs are a tail, kept in
    f32; the matrix product after them still runs in bf16."""
    sinusoids = [op.output(0) for op in model.get_ordered_ops() if op.get_type_name() in ("Sin", "Cos")]
    for index, output in enumerate(sinusoids):
        output.get_tensor().add_names({f"{F32_TAIL}_{index}"})
    if sinusoids:
        model.add_outputs(sinusoids)
    return model


def compile_ir(core, ir: Path, shapes: tuple, precision: str, streams: int = 1, threads: int | None = None,
               view: Callable | None = None):
    """The IR at `ir` (seen through `view`, a function of the ov.Model: the step cache's split)
    compiled for the CPU at input `shapes` in `precision` (bf16 with its sinusoids kept in f32,
    `sinusoids_in_f32`): one stream at LATENCY, or `streams` (a batch's halves), on `threads`
    all together (None: OpenVINO's choice). The IR's weight pages are let go as the compile
    reads them: the compiled model computes with its own repacked copy. For OpenVINOBundle and
    the torch pipeline's OpenVINOUNet alike."""
    import openvino as ov

    model = core.read_model(str(ir))
    if view is not None:
        model = view(model)
    if precision == "bf16":
        model = sinusoids_in_f32(model)
    model.reshape({port.get_any_name(): ov.PartialShape(list(shape)) for port, shape in zip(model.inputs, shapes)})
    config = {"INFERENCE_PRECISION_HINT": precision}
    config |= {"NUM_STREAMS": streams} if streams > 1 else {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with file_pages_dropped(ir.with_suffix(".bin")):
        compiled = core.compile_model(model, "CPU", config)
    del model  # after the dropper stopped: what it frees may unmap the file under it (host.drop_file_pages)
    return compiled


def infer_halves(requests: list, halves: list[tuple[np.ndarray, ...]],
                 every_output: bool = False) -> np.ndarray | list[np.ndarray]:
    """`infer` of a batch cut in two (`cut_in_two`): each half on its own request (a stream of one
    compiled model) at once, their outputs joined again along the batch."""
    for request, half in zip(requests, halves):
        request.start_async(dict(enumerate(half)))
    for request in requests:
        request.wait()
    first, second = (_outputs(request, every_output) for request in requests)
    if every_output:
        return [np.concatenate(pair) for pair in zip(first, second)]
    return np.concatenate([first, second])


def cut_in_two(inputs: tuple[np.ndarray, ...]) -> list[tuple[np.ndarray, ...]] | None:
    """`inputs` cut in two along their batch (the first input's first axis; inputs without it,
    a timestep, go to both), or None for a batch that is odd."""
    batch = inputs[0].shape[0] if inputs[0].ndim else 1
    if batch % 2:
        return None
    half = batch // 2
    return [tuple(x[start:start + half] if x.ndim and x.shape[0] == batch else x for x in inputs)
            for start in (0, half)]


def _threads() -> int | None:
    """OMP_NUM_THREADS, where a deployment's workers share the cores (None: OpenVINO's own choice)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return int(threads) if threads and threads.isdigit() else None


class OpenVINOBundle:
    """A bundle's parts, run by OpenVINO's CPU plugin: `bundle(part, *arrays)` -> the part's
    output as a NumPy array. `precisions` gives each part's inference precision (bf16 or f32);
    `store_compiled` keeps compiled shapes on disk too, in the bundle's compiled/ folder, for a
    fresh process to load (small models only: each of SD's UNet shapes would hold its 1.7 GB
    again). `facts` is the marker's content; `compiles` counts the shapes compiled (or loaded)
    in this process. `replaced` names parts read from another IR than the bundle's own (the
    UNet quantized to int8: models/int8_unet.py). `views` names further parts, each made from a
    part's IR as it is read by a function of the ov.Model (the UNet split for step caching:
    models/openvino_step_cache.py), compiled only when called."""

    def __init__(self, folder: Path, precisions: dict[str, str], store_compiled: bool = False,
                 replaced: dict[str, Path] | None = None, views: dict[str, tuple[str, Callable]] | None = None):
        import openvino as ov

        self.folder = folder
        self._irs = {part: part_ir(folder, part) for part in precisions} | (replaced or {})
        self.facts = bundle_facts(folder)
        sizes = dict(self.facts["bin_bytes"])
        self.precisions = dict(precisions)
        self._views = {view: (part, made) for view, (part, made) in (views or {}).items() if part in self._irs}
        for view, (part, _) in self._views.items():
            self._irs[view], sizes[view], self.precisions[view] = self._irs[part], sizes[part], precisions[part]
        self.core = ov.Core()
        if store_compiled:
            self.core.set_property({"CACHE_DIR": str(folder / COMPILED_DIR)})
        self.compiles = 0
        self._kept = {part: SHAPES_KEPT if size <= HELD_BYTES // SHAPES_KEPT else max(HELD_AT_LEAST, HELD_BYTES // size)
                      for part, size in sizes.items()}
        self._compiled: dict[str, OrderedDict] = {part: OrderedDict() for part in sizes}
        self._splits = {part: size >= SPLIT_BYTES for part, size in sizes.items()}
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self.weight_bytes = sum(self.facts["bin_bytes"].values())  # for the model cache
        # [C+1, 3]: the VAE's latent->RGB map for live previews (models/latent_rgb.py)
        self.latent_rgb = np.asarray(self.facts["latent_rgb"], dtype=np.float32)

    def __call__(self, part: str, *inputs: np.ndarray, every_output: bool = False) -> np.ndarray | list[np.ndarray]:
        """`part`'s first output (`every_output`: all of them, in order) for `inputs`; a large
        part's even batch in two halves at once (SPLIT_BYTES)."""
        halves = cut_in_two(inputs) if self._splits[part] and (_threads() or os.cpu_count() or 1) >= 2 else None
        with self._running:  # one call at a time: a shape's requests are shared by whoever calls
            if halves is None:
                return infer(self._request(part, tuple(x.shape for x in inputs))[0], inputs, every_output)
            return infer_halves(self._request(part, tuple(x.shape for x in halves[0]), streams=2), halves, every_output)

    def release_memory(self, part: str) -> None:
        """Let go of `part`'s working memory (its activations, kept between calls otherwise), and
        of its views'; the next call allocates it again (milliseconds). SD's UNet after a batch's
        last step, so that the decode does not stand on it."""
        with self._lock:
            for member in self._with_views(part):
                for requests in self._compiled[member].values():
                    requests[0].get_compiled_model().release_memory()

    def forget(self, part: str) -> None:
        """Let go of `part`'s compiled shapes, weights and all (its views' too); the next call
        compiles it again."""
        with self._lock:
            for member in self._with_views(part):
                self._compiled[member].clear()

    def _with_views(self, part: str) -> list[str]:
        return [part] + [view for view, (of, _) in self._views.items() if of == part]

    def large(self, part: str) -> bool:
        """Whether `part`'s weights are FORGET_TEXT_BYTES or more."""
        return self.facts["bin_bytes"].get(part, 0) >= FORGET_TEXT_BYTES

    def _request(self, part: str, shapes: tuple, streams: int = 1) -> list:
        """`part`'s infer requests for input `shapes`, one per stream, compiled once and kept."""
        with self._lock:
            held = self._compiled[part]
            if (shapes, streams) in held:
                held.move_to_end((shapes, streams))
                return held[shapes, streams]
            while len(held) >= self._kept[part]:
                held.popitem(last=False)
            view = self._views[part][1] if part in self._views else None
            compiled = compile_ir(self.core, self._irs[part], shapes, self.precisions[part], streams, _threads(), view)
            self.compiles += 1
            held[shapes, streams] = [compiled.create_infer_request() for _ in range(streams)]
            return held[shapes, streams]
