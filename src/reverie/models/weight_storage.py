"""Weights kept in 16 bits and computed in the request's precision: `--weights fp16` (issue 22).

A Stable Diffusion 1.5 model is 4.0 GiB of fp32 weights (UNet 3.2, text encoder 0.46, VAE 0.31):
more than the whole budget of a small machine, before a single activation. A CPU without native
bf16 or fp16 arithmetic must still compute in fp32 to be fast, but nothing says the weights have
to rest in fp32 between uses. With `weights` fp16 (or bf16) the model is loaded straight into
16 bits (no fp32 copy on the way) and every Conv and Linear layer of the UNet, the VAE and the
text encoders computes with a compute-dtype copy of its weights made for its own forward only;
the 16-bit tensors are put back after, never cast again (a hook of diffusers' layerwise-casting
kind). Normalisation layers and embeddings, a small share of the weights, stay in the compute
dtype all the time.

What it costs: casting each layer's weights on each call (about 5 GB of memory traffic an SD
1.5 step; within the noise of the 512 px runs in benchmarks/README.md), and the weights'
rounding to 16 bits: the pictures change a little (PSNR 63 dB against the fp32 picture there),
so it is an option, recorded in the picture's metadata, never the default. Many published SD checkpoints are fp16 files to begin
with: for them `--weights fp16` keeps every bit the file has.

A model with cast weights must not be run from two threads at once (each forward casts the
layer's own parameters in place); reverie's workers run one pass at a time on a model.
"""

from __future__ import annotations

import functools

import torch

WEIGHTS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The layers whose weights rest in 16 bits (diffusers' layerwise casting takes the same kinds).
# Every other layer stays in the compute dtype: the norms, and the embeddings (a small share of
# the weights; a transformers text encoder reports the dtype of its first parameter, the token
# embedding, as its own, and diffusers' pipelines cast the prompt's states to that dtype).
_CAST = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
         torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_HOOK_NAME = "layerwise_casting"  # diffusers' name: its models then report the compute dtype


def storage_dtype(weights: str, compute: torch.dtype) -> torch.dtype:
    """The dtype the weights rest in: `auto` and the compute dtype's own name mean no casting."""
    return compute if weights == "auto" else _DTYPES[weights]


def store_weights(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> torch.nn.Module:
    """Keep `module`'s Conv/Linear/Embedding weights in `storage` and compute each in `compute`
    (in place; the module should already be in `storage`, loaded so). Nothing to do when the
    two are the same."""
    if storage == compute:
        if any(parameter.dtype != compute for parameter in module.parameters()):  # diffusers warns on each cast
            module.to(dtype=compute)
        return module
    from diffusers.hooks import HookRegistry

    hook = _keep_storage_hook()
    for layer in module.modules():
        if isinstance(layer, _CAST):
            HookRegistry.check_if_exists_or_initialize(layer).register_hook(hook(storage, compute, False), _HOOK_NAME)
    for layer in module.modules():
        hooked = getattr(layer, "_diffusers_hook", None) is not None
        if not hooked:  # norms, and parameters held by a parent module itself (a class token ...)
            for tensor in [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]:
                if tensor.is_floating_point() and tensor.dtype != compute:
                    tensor.data = tensor.data.to(compute)
    if getattr(module, "dtype", compute) != compute:
        raise RuntimeError(f"{type(module).__name__} reports {module.dtype} after its weights were cast; "
                           f"the pipelines would cast their inputs to it")
    return module


@functools.cache
def _keep_storage_hook():
    """diffusers' layerwise casting hook, changed to put the stored tensors back after each call
    instead of casting the layer to the storage dtype again. diffusers' own makes a new 16-bit
    copy of every weight on every call: memory traffic, and a second copy of the whole model
    for as long as the loaded tensors (a safetensors file's mapped pages) are still referenced.
    Registered under diffusers' name, so diffusers' models report the compute dtype as theirs."""
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    class KeepStorageHook(LayerwiseCastingHook):
        stored = ()

        def pre_forward(self, module, *args, **kwargs):
            self.post_forward(module, None)  # a forward that raised left its copies in place
            self.stored = [(tensor, tensor.data) for tensor in [*module.parameters(recurse=False),
                                                                *module.buffers(recurse=False)]
                           if tensor.dtype == self.storage_dtype]
            for tensor, data in self.stored:
                tensor.data = data.to(self.compute_dtype)
            return args, kwargs

        def post_forward(self, module, output):
            for tensor, data in self.stored:
                tensor.data = data
            self.stored = ()
            return output

    return KeepStorageHook


def stored_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the first cast layer's weights, or None when the module's weights are not cast."""
    for layer in module.modules():
        if getattr(layer, "_diffusers_hook", None) is not None:
            for parameter in layer.parameters(recurse=False):
                return parameter.dtype
    return None
