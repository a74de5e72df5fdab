"""The DPM++ 2M sampler in NumPy: reverie's "dpmpp_2m" without torch or diffusers.

A request that runs its UNet outside torch (OpenVINO) would otherwise import torch and diffusers
(seconds) only to step the scheduler. `DPMSolver2M` does what diffusers 0.42's
`DPMSolverMultistepScheduler` does when `reverie.samplers.build_scheduler("dpmpp_2m", config)`
builds it: the model's noise schedule (`samplers.scheduler_options`) with the
scheduler's defaults otherwise, i.e. the data-prediction solver ("dpmsolver++", midpoint, order 2)
with a last step to sigma 0. A config or sampler this port does not do raises ValueError, and
`sampler_supported` says beforehand whether it will.

How diffusers steps, mirrored here:
- The first step is first order (no previous output yet) and so is the last: with
  final_sigmas_type "zero" the last step lands on sigma 0 and returns the data prediction itself,
  whatever `lower_order_final`; every other step is the second-order multistep update.
- The schedule (betas, cumulative alphas, sigmas) is float32, the cumulative product taken in
  float64 as torch's CPU cumprod does; the step's coefficients are float32 scalars and the
  updates float32 arrays. diffusers converts the model output in its own dtype and upcasts only
  `sample` to float32 for the update, casting the result back to the model output's dtype; for a
  float32 model that is float32 throughout, which is what this port takes and returns.
- The results agree with diffusers' to about 1e-6 (relative), not bit for bit: torch's float32
  sqrt is not always correctly rounded (NumPy's is), so a few sigmas and step coefficients differ
  in their last bit.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import BadRequest
from ...samplers import Sampler, get_sampler, scheduler_options

_F32 = np.float32

# DPMSolverMultistepScheduler's options that this port runs only at their defaults (these).
_FIXED_OPTIONS = {
    "solver_order": 2,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "thresholding": False,
    "lower_order_final": True,
    "euler_at_final": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -math.inf,
    "variance_type": None,
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
}
# Its options this port implements, with their defaults.
_PORTED_OPTIONS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}


class DPMSolver2M:
    """DPM++ 2M over `steps` steps for a model's scheduler config (its scheduler_config.json).

    Call `step` once per entry of `timesteps`, in order, with the model's output at that timestep.
    """

    def __init__(self, scheduler_config: dict, steps: int):
        config = _options(get_sampler("dpmpp_2m"), scheduler_config)
        train_steps = int(config["num_train_timesteps"])
        if not 1 <= steps < train_steps:
            raise ValueError(f"steps must be from 1 to {train_steps - 1}, not {steps}")
        self.prediction_type: str = config["prediction_type"]
        self.timesteps: np.ndarray = _timesteps(config, steps)
        self.init_noise_sigma: float = 1.0
        alphas = _F32(1.0) - _betas(config)
        alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(_F32)  # torch accumulates in float64
        train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        sigmas = np.interp(self.timesteps, np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas: np.ndarray = np.append(sigmas, 0.0).astype(_F32)  # one per timestep, then the end
        self._index = 0
        self._previous: np.ndarray | None = None  # the last step's data prediction

    def step(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The sample at the next timestep, from the model's output at the current one (float32)."""
        if self._index >= len(self.timesteps):
            raise RuntimeError("all the steps are done")
        model_output = np.asarray(model_output, dtype=_F32)
        sample = np.asarray(sample, dtype=_F32)
        alpha_s0, sigma_s0 = _alpha_sigma(self.sigmas[self._index])
        if self.prediction_type == "v_prediction":
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        else:
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        next_sigma = self.sigmas[self._index + 1]
        if next_sigma == 0:  # the last step: what diffusers' first-order formula gives there, exactly
            prev_sample = x0
        else:
            alpha_t, sigma_t = _alpha_sigma(next_sigma)
            lambda_s0 = _lambda(alpha_s0, sigma_s0)
            h = _lambda(alpha_t, sigma_t) - lambda_s0
            decay = alpha_t * (_F32(math.exp(-h)) - _F32(1.0))
            prev_sample = (sigma_t / sigma_s0) * sample - decay * x0  # first order (DDIM)
            if self._previous is not None:  # second order: the midpoint correction
                r0 = (lambda_s0 - _lambda(*_alpha_sigma(self.sigmas[self._index - 1]))) / h
                d1 = (_F32(1.0) / r0) * (x0 - self._previous)
                prev_sample = prev_sample - (_F32(0.5) * decay) * d1
        self._previous = x0
        self._index += 1
        return prev_sample


def sampler_supported(name: str, scheduler_config: dict) -> bool:
    """Whether `DPMSolver2M` runs sampler `name` (or alias, or label) for this model's scheduler config."""
    try:
        sampler = get_sampler(name)
        if sampler.name != "dpmpp_2m":
            return False
        _options(sampler, scheduler_config)
    except (BadRequest, ValueError):
        return False
    return True


def _options(sampler: Sampler, scheduler_config: dict) -> dict:
    """The ported options of the scheduler build_scheduler makes; ValueError if others are off-default.

    build_scheduler gives diffusers the model's noise-schedule keys and the sampler's options.
    Keys that are not the scheduler's parameters (clip_sample, ...) are ignored, as from_config
    ignores them; so are its parameters that matter only once a fixed option is changed
    (dynamic_thresholding_ratio, sample_max_value, flow_shift, time_shift_type).
    """
    given = scheduler_options(sampler, scheduler_config)
    for key, default in _FIXED_OPTIONS.items():
        if key in given and given[key] != default:
            raise ValueError(f"the NumPy DPM++ 2M does not do {key}={given[key]!r}")
    options = _PORTED_OPTIONS | {k: v for k, v in given.items() if k in _PORTED_OPTIONS}
    if options["trained_betas"] is None and options["beta_schedule"] not in ("linear", "scaled_linear"):
        raise ValueError(f"the NumPy DPM++ 2M does not do beta_schedule={options['beta_schedule']!r}")
    if options["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(f"the NumPy DPM++ 2M does not do prediction_type={options['prediction_type']!r}")
    if options["timestep_spacing"] not in ("leading", "trailing", "linspace"):
        raise ValueError(f"unknown timestep_spacing {options['timestep_spacing']!r}")
    return options


def _betas(options: dict) -> np.ndarray:
    """The training betas in float32, as diffusers makes them with torch."""
    if options["trained_betas"] is not None:
        return np.asarray(options["trained_betas"], dtype=_F32)
    start, end = options["beta_start"], options["beta_end"]
    if options["beta_schedule"] == "scaled_linear":
        return _torch_linspace(start**0.5, end**0.5, options["num_train_timesteps"]) ** 2
    return _torch_linspace(start, end, options["num_train_timesteps"])


def _torch_linspace(start: float, end: float, count: int) -> np.ndarray:
    """torch.linspace in float32: a float32 step, each value from the nearer end, rounded once."""
    first, last = _F32(start), _F32(end)
    step = np.float64((last - first) / _F32(count - 1))
    index = np.arange(count)
    from_start = first + step * index
    from_end = last - step * (count - 1 - index)
    return np.where(index < count // 2, from_start, from_end).astype(_F32)


def _timesteps(options: dict, steps: int) -> np.ndarray:
    """diffusers' set_timesteps, for lambda_min_clipped at its default (no clipping)."""
    train_steps = options["num_train_timesteps"]
    spacing = options["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = train_steps // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + options["steps_offset"]
    return np.arange(train_steps, 0, -train_steps / steps).round().astype(np.int64) - 1


def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    """The signal and noise scales (alpha_t, sigma_t) of a noise level sigma, in float32."""
    alpha = _F32(1.0) / np.sqrt(sigma * sigma + _F32(1.0))
    return alpha, sigma * alpha


def _lambda(alpha: np.float32, sigma: np.float32) -> np.float32:
    """The log signal-to-noise ratio log(alpha) - log(sigma), in float32."""
    return _F32(math.log(alpha)) - _F32(math.log(sigma))
