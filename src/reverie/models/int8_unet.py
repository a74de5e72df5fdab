"""A bundle's UNet with its convolutions and most linear layers in int8, on OpenVINO (issue 22, `--quantize int8`).

At 512 px SD 1.5's UNet spends about two thirds of a bf16 step in its convolutions and linear
layers, at over 90% of the best bf16 product rate this CPU reaches (docs/speed.md): no setting
that computes the same operations in bf16 goes much faster. An int8 dot product does twice the
multiply-adds of a bf16 one per instruction on a CPU with VNNI (AVX512-VNNI, AVX-VNNI, AMX), and
OpenVINO's CPU plugin runs a layer in int8 where the graph quantizes its inputs.

NNCF's post-training quantization (`nncf.quantize`) writes those quantize steps into the
bundle's UNet IR: before each convolution and linear layer (weights and input) and attention's
inputs, with the ranges of each input read from examples (their whole range: NNCF's default,
the mean of each example's range, clipped more and moved reverie-mini's sheet further, 29.9 dB
from bf16's against 32.7) and a bias correction after. The examples are the model's own: its
UNet's inputs while it denoises CALIBRATION_PROMPTS (methods/diffusion/compiled.calibration_inputs).
Left in the bundle's precision: the first and last convolutions (the latents in, the prediction
out: a sliver of the work) and KEPT_LINEARS, the time embedding and the cross-attention.
SmoothQuant, which NNCF's transformer settings run first on the linear layers, is off: with it
mini's pictures moved visibly (19-20 dB over the sheet), without it 33.8 dB (the lowest picture
25.8), and SD 1.5 at 512 px ran 1.44x the bf16 default against 1.33x with the convolutions
alone (whose sheet was 34.0 dB, its lowest picture 19.8: the bell line icon gained a stroke).
Quantizing the cross-attention too took the sheet to 32.4 dB (keys and values only) and 30.8
(all of it). The rest (normalisations, softmax, element-wise steps), the text encoder and the
VAE are untouched. The pictures change more than bf16 changes them, which is why it is asked
for, never the default (docs/speed.md has the figures).

Made once per bundle, on the first request that asks for it (about 4 minutes and an 8.5 GiB
peak for SD 1.5, most of it NNCF reading the ranges; 10-13 s for reverie-mini), into the bundle's
`int8/` folder, so it goes with the bundle when a new file or version replaces it. Its marker
records the NNCF version and CALIBRATION's version: another of either makes it again. NNCF is
optional (requirements-speed.txt); without it such a request is refused, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from ..host import free_memory
from ..outputs.files import partial_folder
from .openvino_bundle import COMPILED_DIR, DONE_NAME, bundle_facts, bundle_made, part_ir

log = logging.getLogger(__name__)

FOLDER = "int8"  # inside the bundle's folder
PART = "unet"  # the folder is a bundle of this one part: openvino_bundle's marker, and its checks
IR_NAME = f"{PART}.xml"
CALIBRATION = 3  # bump when the calibration (prompts, steps, size, NNCF settings) changes
# Linear layers left in the bundle's precision, by their names in the IR (diffusers' module
# paths): the time embedding's, and the whole cross-attention (`attn2`: its keys and values
# read the text encoder's states). The rest, self-attention's and the feed-forward's, run in int8.
KEPT_LINEARS = ("time_emb", ".attn2.")
CALIBRATION_PROMPTS = (
    "a red apple on a wooden table, still life",
    "portrait of an old fisherman, oil painting",
    "a city street at night in the rain, neon signs",
    "mountains above a lake at sunrise, landscape photograph",
)
CALIBRATION_STEPS = 8  # a whole schedule at each prompt, every 8th of it: 32 examples of the CFG pair
CALIBRATION_SIDE = 256  # px, or the model's own side where smaller: the ranges hold across sizes
MEMORY_FACTOR = 3.5  # free memory a quantization needs, in the UNet's f32 weight bytes (SD 1.5: 9.6 GiB peak for its 3.4 GB)


def available() -> bool:
    """Whether NNCF is installed (it is imported only to quantize)."""
    return importlib.util.find_spec("nncf") is not None


def int8_folder(bundle_folder: Path) -> Path:
    return bundle_folder / FOLDER


def _marker() -> dict:
    return {"nncf": metadata.version("nncf") if available() else None, "calibration": CALIBRATION}


def int8_made(bundle_folder: Path) -> bool:
    """Whether the bundle's int8 UNet is made, whole (`bundle_made`), by this NNCF version and calibration."""
    folder = int8_folder(bundle_folder)
    return bundle_made(folder) and all(bundle_facts(folder).get(key) == value for key, value in _marker().items())


def quantize_unet(bundle_folder: Path, examples: Callable[[], list[tuple[np.ndarray, ...]]]) -> Path:
    """Quantize the bundle's UNet (`unet.xml`) to int8 with the inputs `examples()` gives (as
    the bundle's runner calls it: latents, timestep, text states) and write it into the bundle's
    int8 folder, atomically; its IR's path. A MemoryError, before anything is run, where free
    memory is short of what it takes."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    widening = 2 if bundle_facts(bundle_folder)["precision"] == "bf16" else 1  # to f32 (`widened`)
    need, free = MEMORY_FACTOR * widening * (bundle_folder / "unet.bin").stat().st_size, free_memory()
    if free < need:
        raise MemoryError(f"quantizing the UNet to int8 needs about {need / 2**30:.1f} GiB of free memory, "
                          f"and {free / 2**30:.1f} GiB is")
    started = time.perf_counter()
    # NNCF's progress lines off: its logger's level, not nncf.set_log_level, which also sets the
    # level of every handler on that logger (such as a test runner's capture, which it then keeps).
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = widened(ov.Core().read_model(str(part_ir(bundle_folder, "unet"))))
    calibration = examples()  # after the read: the other order peaked at 11.2 GiB against 9.6 (one run each)
    # in the graph's order: the first convolution reads the latents, the last writes the prediction
    ops = model.get_ordered_ops()
    convolutions = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"]
    linears = [op.get_friendly_name() for op in ops
               if op.get_type_name() == "MatMul" and any(part in op.get_friendly_name() for part in KEPT_LINEARS)]
    kept = nncf.IgnoredScope(names=[convolutions[0], convolutions[-1], *linears])  # the ends and KEPT_LINEARS
    settings = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                              smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))  # off
    quantized = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
                              ignored_scope=kept, advanced_parameters=settings)
    del model
    folder = int8_folder(bundle_folder)
    with partial_folder(folder) as partial:
        ov.save_model(quantized, str(partial / IR_NAME), compress_to_fp16=False)
        facts = {"bin_bytes": {PART: (partial / IR_NAME).with_suffix(".bin").stat().st_size},
                 "examples": len(calibration), "quantize_s": round(time.perf_counter() - started, 1)} | _marker()
        (partial / DONE_NAME).write_text(json.dumps(facts))
    # Shapes an earlier int8 UNet compiled (a small bundle keeps them on disk, 40 MB each) would
    # never be read again; OpenVINO names them by a hash, so the bundle's other parts go too and
    # are compiled again once, in seconds.
    for blob in (bundle_folder / COMPILED_DIR).glob("*.blob"):
        blob.unlink(missing_ok=True)
    log.info("quantized %s's UNet to int8 in %.1f s", bundle_folder.name, time.perf_counter() - started)
    return folder / IR_NAME


def widened(model):
    """An OpenVINO `model` with its bf16 weights and conversions made f32 (a bf16 bundle's UNet
    is typed bf16 throughout, as torch traced it; NNCF's quantized graph of it then mixes bf16
    and f32 inputs in its attention, which OpenVINO refuses). The int8 model's other layers
    still compute in bf16 where the bundle's precision asks for it."""
    import openvino as ov
    from openvino import opset13 as ops

    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convert" and op.get_output_element_type(0) == ov.Type.bf16:
            _reroute(op, ops.convert(op.input_value(0), ov.Type.f32))
        elif op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.bf16:
            # the raw bits (OpenVINO hands bf16 data over as 16-bit words): bf16 is f32's upper half
            bits = op.get_data().view(np.uint16).astype(np.uint32) << 16
            _reroute(op, ops.constant(bits.view(np.float32), ov.Type.f32))
    model.validate_nodes_and_infer_types()
    return model


def _reroute(old, new) -> None:
    """Whatever read `old`'s output reads `new`'s."""
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))
