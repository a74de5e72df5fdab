"""reverie-mini as one OpenVINO bundle: its text encoder, UNet, VAE decoder and x2 upscaler,
exported once and then run without torch (issue 22: a cold `reverie generate` spent 5.8 of its
8 s importing torch and diffusers, and a warm request ran four networks on two runtimes).

`make_bundle` (which imports torch) exports the four parts of reverie-mini as the torch path
loads them (models/mini.py, minilm.py, upscaler.py) to OpenVINO's IR, in one folder under the
cache (`$REVERIE_CACHE/openvino/mini-<key>/`), written whole or not at all. The key covers the
weight files' paths, sizes and modification times, the precision and the versions of what
exports them (openvino, torch, diffusers, transformers: read from the installed packages'
metadata, so the key is had without importing them). `MiniBundle` runs the parts: each input
shape compiled on its own (static shapes run faster than dynamic ones), in the bundle's
precision (bf16 on a CPU that computes it natively, as `dtype auto` picks; the upscaler in
bf16 there whatever the request's dtype, as torch's autocast runs it), with OpenVINO's model
cache in the bundle's `compiled/` folder: a fresh process loads a shape it compiled before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import numpy as np

from .clip_tokenizer import cache_dir
from .mini import MINI_DIR, weight_files

log = logging.getLogger(__name__)

FORMAT = 2  # bump when a part's graph or inputs change, or what done.json holds
PARTS = ("text_encoder", "unet", "decoder", "upscaler")
DONE_NAME = "done.json"
COMPILED_DIR = "compiled"
SHAPES_KEPT = 16  # compiled shapes of each part held in a process (a batch size, a latent size each)
VERSIONED = ("openvino", "torch", "diffusers", "transformers")


def precision_of(dtype: str) -> str:
    """OpenVINO's inference precision for a request's resolved dtype name (fp32 or bf16)."""
    return {"bf16": "bf16", "fp32": "f32"}[dtype]


def _source_files() -> list[Path]:
    """The files the bundle is made from: mini's UNet and VAE, MiniLM and the x2 upscaler."""
    from .minilm import model_path
    from .upscaler_files import UPSCALER_DIR, WEIGHTS_X2

    files = []
    for component in ("unet", "vae"):
        files += [MINI_DIR / component / "config.json", *weight_files(MINI_DIR / component)]
    text = Path(model_path())
    files += [text / "config.json", text / "model.safetensors", text / "tokenizer.json", UPSCALER_DIR / WEIGHTS_X2]
    return files


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bundle_folder(precision: str, cache: Path | None = None) -> Path:
    """Where the bundle for `precision` (bf16 or f32) lives: named by what it is made from."""
    parts = {"format": FORMAT, "precision": precision, "versions": {name: _version(name) for name in VERSIONED},
             "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in _source_files()]}
    key = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12).hexdigest()
    return (cache or cache_dir() / "openvino") / f"mini-{key}"


def bundle_made(folder: Path) -> bool:
    """Whether `folder` holds a whole bundle: its marker, and each part's weights of the size recorded."""
    try:
        sizes = json.loads((folder / DONE_NAME).read_text())["bin_bytes"]
        return all((folder / f"{part}.bin").stat().st_size == sizes[part] and (folder / f"{part}.xml").is_file()
                   for part in PARTS)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ----------------------------------------------------------------------------- making it (torch)


def make_bundle(folder: Path, precision: str) -> None:
    """Export reverie-mini's four parts into `folder` (atomically: a temporary folder renamed
    into place), replacing older bundles beside it (made from other files or versions)."""
    import openvino as ov
    import torch

    from .latent_rgb import fit_latent_to_rgb
    from .mini import load_mini
    from .openvino_runtime import TraceableUNet, convert_to_openvino
    from .upscaler import load_upscaler

    started = time.perf_counter()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    mini = load_mini(dtype)
    unet, vae, text_encoder = mini.unet, mini.vae, mini.text_encoder
    upscaler = load_upscaler(scale=2).to(memory_format=torch.contiguous_format)
    channels, states = int(unet.config.in_channels), int(unet.config.cross_attention_dim)
    scaling = float(vae.config.scaling_factor)
    ids = torch.ones(2, 8, dtype=torch.int64)
    parts = {
        # token ids and mask [n, L] -> token states [n, L, D], fp32
        "text_encoder": (_in_fp32(text_encoder, lambda m, i, mask: m(i, attention_mask=mask)[0]), (ids, ids),
                         [([-1, -1], ov.Type.i64), ([-1, -1], ov.Type.i64)]),
        # latents, timestep, text states -> the model's output, fp32 (as the torch path's export)
        "unet": (TraceableUNet(unet), (torch.randn(2, channels, 16, 16), torch.tensor(999.0), torch.randn(2, 8, states)),
                 [([-1, channels, -1, -1], ov.Type.f32), ([], ov.Type.f32), ([-1, -1, states], ov.Type.f32)]),
        # latents -> pixels in [-1, 1] (unclamped), as the pipeline decodes: latents / scaling_factor
        "decoder": (_in_fp32(vae, lambda m, z: m.decode((z / scaling).to(dtype), return_dict=False)[0]),
                    (torch.randn(1, channels, 16, 16),), [([-1, channels, -1, -1], ov.Type.f32)]),
        # pixels in [-1, 1] -> twice as large, in [-1, 1] (unclamped)
        "upscaler": (_in_fp32(upscaler), (torch.rand(1, 3, 32, 32) * 2 - 1,), [([-1, 3, -1, -1], ov.Type.f32)]),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    try:
        sizes = {}
        for name, (module, example, inputs) in parts.items():
            model = convert_to_openvino(module, example, inputs)
            ov.save_model(model, str(partial / f"{name}.xml"), compress_to_fp16=False)
            sizes[name] = (partial / f"{name}.bin").stat().st_size
        (partial / DONE_NAME).write_text(json.dumps({
            "bin_bytes": sizes, "precision": precision, "export_s": round(time.perf_counter() - started, 1),
            "latent_rgb": fit_latent_to_rgb(vae).tolist()}))  # live previews' latent->RGB map
        if not bundle_made(folder):  # another process may have made it meanwhile: then it stays
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(partial, folder)
            except OSError:
                if not bundle_made(folder):
                    raise
        for old in folder.parent.glob("mini-*"):
            if old != folder and _made_in(old) == precision:
                shutil.rmtree(old, ignore_errors=True)  # made from other files or versions: never read again
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    log.info("exported reverie-mini to OpenVINO in %.1f s: %s", time.perf_counter() - started, folder)


def _made_in(folder: Path) -> str | None:
    """The precision of the bundle in `folder`, None for anything else (a partial one, another entry)."""
    try:
        return json.loads((folder / DONE_NAME).read_text())["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _in_fp32(module, call=None):
    """`module` (run by `call(module, *inputs)`, or called) answering in fp32, for the exporter."""
    import torch

    class InFp32(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *inputs):
            return (call(self.inner, *inputs) if call else self.inner(*inputs)).float()

    return InFp32().eval()


# ----------------------------------------------------------------------------- running it (no torch)


class MiniBundle:
    """The bundle's parts, run by OpenVINO's CPU plugin: `bundle(part, *arrays)` -> the part's
    output as a NumPy array; `latent_rgb`, the VAE's latent->RGB map for live previews. `compiles` counts the shapes compiled (or loaded from the
    bundle's compiled/ folder) in this process."""

    def __init__(self, folder: Path, precision: str, upscaler_precision: str):
        import openvino as ov

        self.folder = folder
        self.precisions = {part: upscaler_precision if part == "upscaler" else precision for part in PARTS}
        self.core = ov.Core()
        self.core.set_property({"CACHE_DIR": str(folder / COMPILED_DIR)})
        self.compiles = 0
        self._compiled: dict[str, OrderedDict] = {part: OrderedDict() for part in PARTS}
        self._lock = threading.Lock()
        self.weight_bytes = sum((folder / f"{part}.bin").stat().st_size for part in PARTS)  # for the model cache
        # [C+1, 3]: the VAE's latent->RGB map for live previews (models/latent_rgb.py)
        self.latent_rgb = np.asarray(json.loads((folder / DONE_NAME).read_text())["latent_rgb"], dtype=np.float32)

    def __call__(self, part: str, *inputs: np.ndarray) -> np.ndarray:
        request = self._request(part, tuple(x.shape for x in inputs))
        request.infer(dict(enumerate(inputs)))
        return request.get_output_tensor(0).data.copy()

    def _request(self, part: str, shapes: tuple):
        import openvino as ov

        with self._lock:
            held = self._compiled[part]
            if shapes in held:
                held.move_to_end(shapes)
                return held[shapes]
            model = self.core.read_model(str(self.folder / f"{part}.xml"))
            model.reshape({port.get_any_name(): ov.PartialShape(list(shape)) for port, shape in zip(model.inputs, shapes)})
            config = {"INFERENCE_PRECISION_HINT": self.precisions[part], "PERFORMANCE_HINT": "LATENCY"}
            threads = os.environ.get("OMP_NUM_THREADS")  # a deployment's workers share the cores
            if threads and threads.isdigit():
                config["INFERENCE_NUM_THREADS"] = int(threads)
            request = self.core.compile_model(model, "CPU", config).create_infer_request()
            self.compiles += 1
            while len(held) >= SHAPES_KEPT:
                held.popitem(last=False)
            held[shapes] = request
            return request
