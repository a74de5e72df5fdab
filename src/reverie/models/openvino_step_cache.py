"""Step caching on OpenVINO (models/step_cache.py's, without torch): a UNet's IR split where
its deep features enter the shallowest up block's last layer.

That layer's input is one Concat of two tensors: the deep features (all that the UNet computed
between `conv_in` and there) and `conv_in`'s own output, its skip connection. `with_deep_output`
keeps the first as a second output; `with_deep_input` takes it as a further input in its place,
so that what still runs is what does not depend on it: the time embedding, `conv_in`, that
layer and `conv_out` (OpenVINO leaves out the rest when it compiles). Both are made from the
UNet's IR as it is read, so nothing is exported again: a bundle's own UNet, its int8 one, a
LoRA set's, SDXL's alike. SD 1.5's UNet at 512 px, CFG batch, bf16 on 2 cores: whole 4.25 s,
the shallow part 0.39 s.

`CachedUNet` runs them on StepCache's schedule (whole every `interval`-th evaluation), for the
torch-free path's bundles and the torch pipeline's OpenVINO UNet alike, so a picture is the
torch UNet's step-cached one up to the runtimes' kernels.
"""

from __future__ import annotations

import re

import numpy as np

from .step_cache import StepCache

WHOLE = "unet-whole"  # the bundle's parts made from its UNet's IR (OpenVINOBundle's `views`)
SHALLOW = "unet-shallow"


class NotSplittable(RuntimeError):
    """The IR has no single join of deep features with `conv_in`'s output (not an SD-layout UNet)."""


def _made_by_conv_in(node) -> bool:
    while node.get_type_name() in ("FakeQuantize", "Convert"):  # an int8 IR quantizes the join's inputs
        node = node.input_value(0).get_node()
    return re.search(r"(^|\.)conv_in/", node.get_friendly_name()) is not None


def _skip_join(model):
    """The Concat that makes the last up layer's input: [deep features, conv_in's output]."""
    joins = [op for op in model.get_ordered_ops() if op.get_type_name() == "Concat" and op.get_input_size() == 2
             and _made_by_conv_in(op.input_value(1).get_node())]
    if len(joins) != 1:
        raise NotSplittable(f"{len(joins)} joins of conv_in's output with deeper features, where an SD UNet has one")
    return joins[0]


def with_deep_output(model):
    """`model` (an ov.Model of a UNet) with its deep features as a second output."""
    model.add_outputs([_skip_join(model).input_value(0)])
    return model


def with_deep_input(model):
    """A model of `model`'s shallow part: its inputs and then the deep features, its output the same."""
    import openvino as ov
    import openvino.opset13 as ops

    join = _skip_join(model)
    deep = join.input_value(0)
    given = ops.parameter(deep.get_partial_shape(), deep.get_element_type(), name="deep_features")
    join.input(0).replace_source_output(given.output(0))
    return ov.Model(model.get_results(), [*model.get_parameters(), given], "unet_shallow")


VIEWS = {WHOLE: ("unet", with_deep_output), SHALLOW: ("unet", with_deep_input)}


class CachedUNet:
    """An OpenVINO UNet for one sampling run (one batch): `unet(*inputs)` -> its output. `parts`
    runs a part by name, `parts(part, *inputs, every_output=False)`: an OpenVINOBundle, or the
    torch pipeline's OpenVINOUNet's `run_part` (models/openvino_runtime.py). With an `interval`
    above 1 every `interval`-th evaluation runs the whole UNet and keeps its deep features, the
    others run the shallow part on them; else the plain UNet every time (interval 1: the same
    pixels as without)."""

    def __init__(self, parts, interval: int | None):
        self.parts = parts
        self.schedule = StepCache(interval) if interval and interval > 1 else None
        self.deep: np.ndarray | None = None

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        if self.schedule is None:
            return self.parts("unet", *inputs)
        self.schedule.begin()
        if self.schedule.whole:
            out, self.deep = self.parts(WHOLE, *inputs, every_output=True)
            return out
        return self.parts(SHALLOW, *inputs, self.deep)
