"""Reverie's DPM++ 2M, DPM++ 2S, DPM++ SDE, Euler, Heun, DPM2, LMS, DDIM, DDPM, PLMS, LCM, UniPC
and DEIS samplers in NumPy: "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "dpmpp_2s_karras",
"dpmpp_sde_karras", "euler", "euler_karras", "euler_a", "heun", "dpm2", "dpm2_a", "lms",
"lms_karras", "ddim", "ddpm", "plms", "lcm", "unipc" and "deis" without torch or diffusers (all of
reverie's samplers).

A request that runs its UNet outside torch (OpenVINO) would otherwise import torch and diffusers
(seconds) only to step the scheduler. `make_sampler(name, config, steps)` gives the sampler that
does what diffusers 0.42's scheduler does when `reverie.samplers.build_scheduler(name, config)`
builds it: the model's noise schedule (`samplers.scheduler_options`) plus the sampler row's options
(Karras sigmas, the SDE solver), the scheduler's defaults otherwise. Fifteen schedulers are ported:

- `DPMSolver2M`, diffusers' `DPMSolverMultistepScheduler` at its defaults: the data-prediction
  solver ("dpmsolver++", midpoint, order 2) with a last step to sigma 0; with or without Karras
  sigmas ("dpmpp_2m_karras", reverie's default sampler for Stable Diffusion); and its SDE form
  ("sde-dpmsolver++": "dpmpp_2m_sde_karras"), which adds fresh noise at every step.
- `EulerDiscrete`, diffusers' `EulerDiscreteScheduler` at its defaults: the deterministic Euler
  step (s_churn 0) with a last step to sigma 0; with or without Karras sigmas.
- `EulerAncestral`, diffusers' `EulerAncestralDiscreteScheduler` ("euler_a", A1111's "Euler a"):
  Euler's schedule, each step down to a lower sigma and fresh noise added back up to the next one.
- `DDIM`, diffusers' `DDIMScheduler` ("ddim"): deterministic at eta 0 (the request's `eta`, 0 by
  default), adding that share of DDPM's noise above it.
- `DDPM`, diffusers' `DDPMScheduler` ("ddpm"): ancestral sampling over DDIM's timesteps, the
  posterior's mean plus its spread ("fixed_small") times fresh noise, drawn wherever the
  timestep is above 0.
- `LCM`, diffusers' `LCMScheduler` ("lcm"): a latent consistency model's multistep sampling, the
  consistency function's data prediction noised again to each next timestep with fresh noise
  (none drawn for the last step), over timesteps taken from the 50 the model was distilled on.
- `Heun`, diffusers' `HeunDiscreteScheduler` ("heun"): Euler's schedule, each step but the
  last taken twice (a second model evaluation at the next sigma, the slopes averaged);
  `timesteps` lists every evaluation, and an image mode begins at `order` (2) times its step.
- `DPM2`, diffusers' `KDPM2DiscreteScheduler` ("dpm2"): Euler's schedule, each step but the
  last taken in two passes, the second at the step's geometric midpoint (its timestep worked
  out from that sigma); `order` 2, as Heun's.
- `DPM2Ancestral`, diffusers' `KDPM2AncestralDiscreteScheduler` ("dpm2_a", A1111's "DPM2 a"):
  DPM2's two passes, the second landing on Euler a's sigma_down (the midpoint taken toward it)
  and adding fresh noise times sigma_up; drawn in second passes alone, none for the last step.
- `LMS`, diffusers' `LMSDiscreteScheduler` ("lms", "lms_karras"): Euler's schedule (with or
  without Karras sigmas) and a fourth-order linear multistep step over the slopes, its
  coefficients integrated exactly (diffusers integrates them numerically).
- `PLMS`, diffusers' `PNDMScheduler` with its PRK steps skipped ("plms"): linear multistep
  over the noise predictions up to fourth order, its first step taken twice.
- `UniPC`, diffusers' `UniPCMultistepScheduler` at its defaults ("unipc"): the second-order
  data-prediction predictor with B(h) = e^h - 1 ("bh2") over DPM++ 2M's timesteps, first order
  at the start and the end, and the UniC corrector before every step but the first, which
  mends the sample with the model's output at it (no evaluation more).
- `DEIS`, diffusers' `DEISMultistepScheduler` at its defaults ("deis"): the second-order log-rho
  multistep solver over the noise predictions, on DPM++ 2M's timesteps with a last sigma of the
  first training sigma's instead of 0, first order at the start (and the end under 15 steps).
- `DPMSolver2S`, diffusers' `DPMSolverSinglestepScheduler` with Karras sigmas ("dpmpp_2s_karras"):
  DPM++ 2M Karras's schedule stepped in pairs, a first-order step to the pair's middle timestep
  then a second-order one from the pair's start with both data predictions, first order at the end.
- `DPMSolverSDE`, diffusers' `DPMSolverSDEScheduler` with Karras sigmas ("dpmpp_sde_karras",
  A1111's "DPM++ SDE Karras"): Euler's Karras schedule, each step but the last in two stochastic
  passes (to the midpoint in log sigma, then the whole step with the midpoint's prediction), its
  noise the increments of each picture's Brownian motion (brownian_tree.py, seeded with the
  pictures' `seeds`, as torchsde's tree is by build_scheduler's), not the generator's.

The stochastic ones (`stochastic` is true) take that step's fresh noise in `step(..., noise)` where
`wants_noise` says the step takes some: diffusers draws it at each step (LCM at each but the
last, DPM2 a in second passes alone, DDPM where the timestep is above 0), after the starting
noise, from the picture's own generator (a float32 `torch.randn` of the sample's shape, one per
picture), so the caller draws it from the same stream (torch_noise.TorchCPUGenerator) and the
picture is the torch pipeline's. In a bf16 run diffusers draws Euler a's (and DPM2 a's, DDPM's
and LCM's) noise in bf16: the same values rounded (torch 2.14 draws bf16 noise as float32's,
rounded), one rounding this port leaves out as it leaves the latents' out.

A config or sampler this port does not do raises ValueError, and `sampler_supported` says
beforehand whether it will. Every sampler has `timesteps` (what diffusers passes the UNet at each
step, in diffusers' dtype: int64 for DPM++ 2M, float32 for Euler, float64 for DPM++ SDE), `init_noise_sigma` (the starting
noise's scale), `scale_model_input(sample)` (the UNet's input at the current step) and
`step(model_output, sample, noise=None)` (the sample at the next step; it moves the sampler on by
one; `noise`, the step's fresh noise, for the stochastic samplers only).

How diffusers does it, mirrored here:
- The training schedule (betas, cumulative alphas, sigmas) is float32, the cumulative product
  taken in float64 as torch's CPU cumprod does. Timesteps and inference sigmas are worked out in
  NumPy (float64 mostly, from the float32 training sigmas) and stored as float32 sigmas.
- Karras sigmas (rho 7) run from sigma_max to sigma_min; the timesteps are then the sigmas' places
  on the training schedule (`_sigma_to_t`, interpolating log sigma). The two schedulers differ:
  DPM++ 2M takes sigma_min/max from the whole training schedule and rounds its timesteps to
  integers (so `timestep_spacing` and `steps_offset` do not matter to it), Euler takes them from
  the sigmas of its spaced timesteps and keeps fractional timesteps.
- DPM++ 2M: the first step is first order (no previous output yet) and so is the last: with
  final_sigmas_type "zero" diffusers 0.42 steps the last one first order whatever
  `lower_order_final` and the step count (its "fewer than 15 steps" rule only changes third-order
  solvers), and that step lands on sigma 0 and returns the data prediction itself. Every other
  step is the second-order multistep update. It leaves the UNet's input as it is.
- Euler divides the UNet's input by sqrt(sigma^2 + 1) and starts from noise scaled by the largest
  sigma (timestep_spacing "linspace" or "trailing") or sqrt(sigma_max^2 + 1) ("leading").
- The step's coefficients are float32 scalars and the updates float32 arrays. diffusers upcasts
  `sample` to float32 for the update and casts the result back to the model output's dtype; for
  a float32 model that is float32 throughout, which is what this port takes and returns.
- diffusers' pipelines call neither `set_begin_index` nor anything else before the first step, so
  the scheduler finds its first step index by looking the first timestep up: were it repeated
  later, diffusers would start at the repeat. No schedule this port makes repeats its first
  timestep (it checks, and raises ValueError otherwise); from there the index counts steps.
- The results agree with diffusers' to about 1e-6 (relative), not bit for bit: torch's float32
  sqrt is not always correctly rounded (NumPy's is), so a few sigmas and step coefficients differ
  in their last bit. DEIS's coefficients (differences of nearly equal terms) and DPM2 a's
  sigma_down (a difference of squares) magnify those bits: a few 1e-6 there, as a whole run with
  diffusers' own sigmas is back within 1.5e-6. DPM++ SDE's noise can differ more: its tree
  rounds the times it is asked about to 6 decimals, and where diffusers' (torch's float32 log
  and exp, not correctly rounded) rounds otherwise than this port's, that pass's noise is the
  Brownian motion over a span 1e-6 longer or shorter: runs up to about 1e-3 apart.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import BadRequest
from ...samplers import Sampler, get_sampler, scheduler_options
from .brownian_tree import BrownianTree

_F32 = np.float32

# DPMSolverMultistepScheduler's options that this port runs only at their defaults (these).
_FIXED_OPTIONS = {
    "solver_order": 2,
    "solver_type": "midpoint",
    "thresholding": False,
    "lower_order_final": True,
    "euler_at_final": False,
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
    "use_karras_sigmas": False,
}
# DPMSolverMultistepScheduler's options this port implements beyond those, with their defaults.
_DPM_OPTIONS = _PORTED_OPTIONS | {"algorithm_type": "dpmsolver++"}
# Ported options that take only some values here.
_CHOICES = {"algorithm_type": ("dpmsolver++", "sde-dpmsolver++")}

# EulerDiscreteScheduler's options that this port runs only at their defaults (these).
_EULER_FIXED_OPTIONS = {
    "interpolation_type": "linear",
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "sigma_min": None,
    "sigma_max": None,
    "timestep_type": "discrete",
    "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero",
}
# DPMSolverSDEScheduler's options that this port runs only at their defaults (its sampler row turns
# Karras sigmas on), and its ported ones: Euler's, with its own default betas.
_SDE_FIXED_OPTIONS = {"use_exponential_sigmas": False, "use_beta_sigmas": False,
                      "noise_sampler_seed": None}  # the seeds come as `seeds` (build_scheduler sets them after)
_SDE_OPTIONS = _PORTED_OPTIONS | {"beta_start": 0.00085, "beta_end": 0.012}
# EulerAncestralDiscreteScheduler's: it has no Karras sigmas, and one option this port keeps at its default.
_EULER_A_FIXED_OPTIONS = {"rescale_betas_zero_snr": False}
# The noise schedule's options alone (those ported without Karras sigmas), which the other
# schedulers' tables start from; Euler a's, as they are.
_SCHEDULE_OPTIONS = {k: v for k, v in _PORTED_OPTIONS.items() if k != "use_karras_sigmas"}
# DDIMScheduler's: those it keeps at their defaults here, and those ported (their defaults, which
# differ from the others': clipping on, leading spacing, alpha 1 at the end).
_DDIM_FIXED_OPTIONS = {"thresholding": False, "rescale_betas_zero_snr": False}
_DDIM_OPTIONS = _SCHEDULE_OPTIONS | {"clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True,
                                    "timestep_spacing": "leading"}
# DDPMScheduler's: DDIM's less set_alpha_to_one (it ends at alpha 1), and its variance at the default.
_DDPM_FIXED_OPTIONS = _DDIM_FIXED_OPTIONS | {"variance_type": "fixed_small"}
_DDPM_OPTIONS = {k: v for k, v in _DDIM_OPTIONS.items() if k != "set_alpha_to_one"}

# LCMScheduler's: those it keeps at their defaults here, and those ported with its defaults (SD's
# schedule; it reads neither timestep_spacing nor steps_offset, kept for the shared checks).
_LCM_FIXED_OPTIONS = {"thresholding": False, "rescale_betas_zero_snr": False}
_LCM_OPTIONS = _SCHEDULE_OPTIONS | {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                   "original_inference_steps": 50, "clip_sample": False, "clip_sample_range": 1.0,
                                   "set_alpha_to_one": True, "timestep_spacing": "leading", "timestep_scaling": 10.0}

# HeunDiscreteScheduler's: those it keeps at their defaults here (no Karras sigmas: reverie's
# "heun" row has none), and those ported with its own defaults (SD's betas, spaced linearly).
_HEUN_FIXED_OPTIONS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_HEUN_OPTIONS = _SCHEDULE_OPTIONS | {"beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
                                    "clip_sample_range": 1.0}

# LMSDiscreteScheduler's that this port runs only at their defaults.
_LMS_FIXED_OPTIONS = {"use_exponential_sigmas": False, "use_beta_sigmas": False}

# KDPM2DiscreteScheduler's: Heun's fixed ones, and the schedule with its own defaults.
_DPM2_OPTIONS = _SCHEDULE_OPTIONS | {"beta_start": 0.00085, "beta_end": 0.012}

# PNDMScheduler's: its PRK steps skipped, as reverie's "plms" row asks; those ported with its
# defaults (DDPM's betas, leading spacing, the first cumulative alpha past the end).
_PLMS_FIXED_OPTIONS = {"skip_prk_steps": True}
_PLMS_OPTIONS = _SCHEDULE_OPTIONS | {"timestep_spacing": "leading", "set_alpha_to_one": False}

# UniPCMultistepScheduler's that this port runs only at their defaults (these): UniPC-2 with
# the bh2 B(h), data prediction, lower order at the end, the corrector at every step.
_UNIPC_FIXED_OPTIONS = {
    "solver_order": 2, "predict_x0": True, "solver_type": "bh2", "lower_order_final": True, "disable_corrector": [],
    "solver_p": None, "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero", "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False, "time_shift_type": "exponential", "sigma_min": None, "sigma_max": None,
    "shift_terminal": None, "thresholding": False,
}

# DEISMultistepScheduler's that this port runs only at their defaults (these): second-order
# log-rho DEIS, first order at the end under 15 steps, the training schedule's sigmas.
_DEIS_FIXED_OPTIONS = {
    "solver_order": 2, "algorithm_type": "deis", "solver_type": "logrho", "lower_order_final": True,
    "thresholding": False, "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "use_flow_sigmas": False, "use_dynamic_shifting": False,
}

# DPMSolverSinglestepScheduler's: DPM++ 2M's fixed ones that it has, with its own default
# lower_order_final (off, which final_sigmas_type "zero" turns on) and the Karras sigmas of
# reverie's only row for it; its ported ones: the schedule's less the spacing (it has none:
# its timesteps are Karras's), with its defaults.
_DPM_2S_FIXED_OPTIONS = {k: v for k, v in _FIXED_OPTIONS.items()
                         if k not in ("euler_at_final", "use_lu_lambdas", "rescale_betas_zero_snr")}
_DPM_2S_FIXED_OPTIONS |= {"lower_order_final": False, "algorithm_type": "dpmsolver++", "use_karras_sigmas": True}
_DPM_2S_OPTIONS = {k: v for k, v in _SCHEDULE_OPTIONS.items() if k not in ("timestep_spacing", "steps_offset")}


class _Steps:
    """What every sampler keeps: the index of the current timestep, and where they begin."""

    timesteps: np.ndarray
    _index: int = 0
    stochastic: bool = False  # whether `step` takes fresh noise
    order: int = 1  # model evaluations a step (an image mode begins at order x the step it enters at)

    def _fresh(self, noise: np.ndarray | None, sample: np.ndarray) -> np.ndarray:
        """A stochastic step's noise, checked: the sample's shape, float32."""
        if noise is None:
            raise ValueError(f"{type(self).__name__} adds fresh noise at each step: pass it as `noise`")
        noise = np.asarray(noise, dtype=_F32)
        if noise.shape != sample.shape:
            raise ValueError(f"the noise is {noise.shape}, the sample {sample.shape}")
        return noise

    @property
    def wants_noise(self) -> bool:
        """Whether the next `step` takes fresh noise (diffusers draws it for that step)."""
        return self.stochastic

    @property
    def step_index(self) -> int:
        """The index of the current timestep (how many steps are done, past `begin_at`'s)."""
        return self._index

    def scale_model_input(self, sample: np.ndarray) -> np.ndarray:
        """The UNet's input at the current step: `sample` itself (diffusers returns it as it is;
        the samplers over sigmas, Euler's family, scale it)."""
        _check_not_done(self._index, self.timesteps)
        return np.asarray(sample, dtype=_F32)

    def begin_at(self, index: int) -> None:
        """Start at timestep `index` (img2img: the later `strength` leaves off the schedule's
        start), as diffusers' set_begin_index; before the first step only."""
        if self._index:
            raise RuntimeError("begin_at comes before the first step")
        if not 0 <= index < len(self.timesteps):
            raise ValueError(f"index {index} is not one of the {len(self.timesteps)} timesteps")
        self._index = index


class _OverSigmas(_Steps):
    """A sampler that noises an image mode's latents by its sigmas (DPM++ 2M's, DPM++ 2S's, DEIS's
    and UniPC's), and leaves the UNet's input as it is."""

    sigmas: np.ndarray
    prediction_type: str

    def _schedule(self, config: dict, steps: int, karras: bool = False, sigma_min_last: bool = False) -> None:
        """DPMSolverMultistepScheduler's set_timesteps (UniPC's, DEIS's and, with Karras sigmas,
        DPMSolverSinglestepScheduler's are the same): `timesteps`, one sigma per timestep then 0
        (`sigmas`; DEIS's: the first training sigma, `sigma_min_last`), starting from the noise as drawn."""
        train_sigmas = _train_sigmas(config)
        if karras:
            # _convert_to_karras of the flipped training sigmas (sigma_min is the first training
            # sigma, sigma_max the last), then timesteps = _sigma_to_t(...).round() (NumPy's
            # round, half to even), made int64 by torch.
            sigmas = _karras(float(train_sigmas[0]), float(train_sigmas[-1]), steps)
            self.timesteps = _sigma_to_t(sigmas, np.log(train_sigmas)).round().astype(np.int64)
        else:
            self.timesteps = _timesteps(config, steps)
            sigmas = np.interp(self.timesteps, np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = np.append(sigmas, train_sigmas[0] if sigma_min_last else 0.0).astype(_F32)
        self.init_noise_sigma: float = 1.0
        _check_first_timestep(self.timesteps)

    def _lambda_at(self, index: int) -> np.float32:
        """The log signal-to-noise ratio at sigma number `index`."""
        return _lambda(*_alpha_sigma(self.sigmas[index]))

    def _data(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The data prediction (x0) from the model's output at the current sigma, in float32."""
        alpha, sigma = _alpha_sigma(self.sigmas[self._index])
        model_output = np.asarray(model_output, dtype=_F32)
        if self.prediction_type == "v_prediction":
            return alpha * sample - sigma * model_output
        return (sample - sigma * model_output) / alpha

    def _step_size(self, since: int) -> np.float32:
        """h: the log-SNR step from sigma number `since` to the next sigma (not 0)."""
        return self._lambda_at(self._index + 1) - self._lambda_at(since)

    def _difference(self, x0: np.ndarray, earlier: np.ndarray, h: np.float32) -> np.ndarray:
        """DPM-Solver++'s second-order term D1 for a step of log-SNR size `h`: the data prediction's
        change from the sigma before the current one (`earlier`) to the current one's (`x0`),
        over r0, that change's log-SNR step relative to h."""
        r0 = (self._lambda_at(self._index) - self._lambda_at(self._index - 1)) / h
        return (_F32(1.0) / r0) * (x0 - earlier)

    def _dpmpp(self, sample: np.ndarray, since: int, h: np.float32, data: np.ndarray,
               change: np.ndarray | None = None) -> np.ndarray:
        """DPM-Solver++'s (midpoint) update: the sample at the next sigma from `sample` at sigma
        number `since`, `h` the log-SNR step between them; first order over the data prediction
        `data`, second order with `change` too (D1, `_difference`)."""
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[self._index + 1])
        decay = alpha_t * (_F32(math.exp(-h)) - _F32(1.0))
        prev_sample = (sigma_t / _alpha_sigma(self.sigmas[since])[1]) * sample - decay * data  # first order (DDIM)
        if change is not None:
            prev_sample = prev_sample - (_F32(0.5) * decay) * change
        return prev_sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """`original` latents noised to the current timestep, as diffusers' add_noise for the image modes:
        alpha_t * original + sigma_t * noise, in float32."""
        alpha, sigma = _alpha_sigma(self.sigmas[self._index])
        return alpha * np.asarray(original, dtype=_F32) + sigma * np.asarray(noise, dtype=_F32)


class _OverAlphas(_Steps):
    """A sampler that noises an image mode's latents by the cumulative alphas at its timesteps
    (DDIM's, PLMS's and LCM's: DDPM's add_noise)."""

    alphas_cumprod: np.ndarray
    final_alpha: np.float32  # the cumulative alpha past the last timestep
    prediction_type: str
    clip: float | None = None  # the range the data prediction is clipped to (`clip_sample`), if any

    def _alphas_from(self, config: dict) -> None:
        """The cumulative alphas (float32, their product taken in float64 as torch's CPU cumprod
        takes it) and the one past the end: 1, or the first's (`set_alpha_to_one`; DDPM, which has
        no such option, takes 1)."""
        alphas = _F32(1.0) - _betas(config)
        self.alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(_F32)
        self.final_alpha = _F32(1.0) if config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]

    def _data(self, model_output: np.ndarray, sample: np.ndarray, alpha_t: np.float32) -> np.ndarray:
        """The data prediction (x0) from the model's output at cumulative alpha `alpha_t`, clipped
        where the schedule asks (`clip`), in float32."""
        beta_t = _F32(1.0) - alpha_t
        if self.prediction_type == "v_prediction":
            x0 = alpha_t ** _F32(0.5) * sample - beta_t ** _F32(0.5) * model_output
        else:
            x0 = (sample - beta_t ** _F32(0.5) * model_output) / alpha_t ** _F32(0.5)
        return _clipped(x0, self.clip)

    def add_noise(self, original: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """`original` latents noised to the current timestep (diffusers' add_noise):
        sqrt(alpha_bar_t) * original + sqrt(1 - alpha_bar_t) * noise, in float32."""
        alpha = self.alphas_cumprod[self.timesteps[self._index]]
        return (alpha ** _F32(0.5) * np.asarray(original, dtype=_F32)
                + (_F32(1.0) - alpha) ** _F32(0.5) * np.asarray(noise, dtype=_F32))


class DPMSolver2M(_OverSigmas):
    """DPM++ 2M over `steps` steps for a model's scheduler config (its scheduler_config.json).

    `sampler` names the row of reverie.samplers whose options it runs: "dpmpp_2m" (the default),
    "dpmpp_2m_karras" or "dpmpp_2m_sde_karras" (stochastic). Call `step` once per entry of
    `timesteps`, in order, with the model's output at that timestep (and the SDE's fresh noise).
    """

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "dpmpp_2m"):
        config = _configured(DPMSolver2M, sampler, scheduler_config, steps)
        self.prediction_type: str = config["prediction_type"]
        self.stochastic = config["algorithm_type"] == "sde-dpmsolver++"
        self._schedule(config, steps, karras=config["use_karras_sigmas"])
        self._index = 0
        self._previous: np.ndarray | None = None  # the last step's data prediction

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep, from the model's output at the current one (float32);
        the SDE solver's `noise` is this step's fresh noise (drawn at the last step too, which lands
        on the data prediction and leaves it unused, as diffusers draws it)."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        if self.stochastic:
            noise = self._fresh(noise, sample)
        x0 = self._data(model_output, sample)
        if self.sigmas[self._index + 1] == 0:  # the last step: what diffusers' first-order formula gives there, exactly
            prev_sample = x0
        else:
            h = self._step_size(self._index)
            # second order from the second step on: the midpoint correction's difference
            d1 = None if self._previous is None else self._difference(x0, self._previous, h)
            if self.stochastic:  # sde-dpmsolver++: the data term's weight 1 - e^-2h, and noise to sigma_t
                alpha_t, sigma_t = _alpha_sigma(self.sigmas[self._index + 1])
                gain = alpha_t * (_F32(1.0) - _F32(math.exp(_F32(-2.0) * h)))
                sigma_s0 = _alpha_sigma(self.sigmas[self._index])[1]
                prev_sample = (sigma_t / sigma_s0 * _F32(math.exp(-h))) * sample + gain * x0
                if d1 is not None:
                    prev_sample = prev_sample + (_F32(0.5) * gain) * d1
                spread = sigma_t * _F32(math.sqrt(_F32(1.0) - _F32(math.exp(_F32(-2.0) * h))))
                prev_sample = prev_sample + spread * noise
            else:
                prev_sample = self._dpmpp(sample, self._index, h, x0, d1)
        self._previous = x0
        self._index += 1
        return prev_sample


class EulerDiscrete(_Steps):
    """Euler over `steps` steps for a model's scheduler config (its scheduler_config.json).

    `sampler` names the row of reverie.samplers whose options it runs: "euler" (the default) or
    "euler_karras". Per entry of `timesteps`, in order: give the UNet `scale_model_input(sample)`,
    then call `step` with its output.
    """

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "euler"):
        config = _configured(type(self), sampler, scheduler_config, steps)
        config.setdefault("use_karras_sigmas", False)  # Euler a has none
        self.config: dict = config  # the scheduler's options as run (its subclasses read theirs)
        self.prediction_type: str = config["prediction_type"]
        self.train_sigmas: np.ndarray = _train_sigmas(config)
        timesteps = _euler_timesteps(config, steps)
        sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)  # float64
        if config["use_karras_sigmas"]:
            # Unlike DPM++ 2M's, Euler's Karras sigmas span the sigmas of its spaced timesteps
            # (in_sigmas[-1].item() and in_sigmas[0].item()), and its timesteps stay fractional.
            sigmas = _karras(float(sigmas[-1]), float(sigmas[0]), steps)
            timesteps = _sigma_to_t(sigmas, np.log(self.train_sigmas))
        self.timesteps: np.ndarray = timesteps.astype(_F32)
        self.exact_sigmas: np.ndarray = sigmas  # float64, as set_timesteps has them before the float32 cast
        self.sigmas: np.ndarray = np.append(sigmas, 0.0).astype(_F32)  # one per timestep, then the end
        # init_noise_sigma: a float32 tensor in diffusers, sigmas.max() or (max**2 + 1) ** 0.5.
        max_sigma = self.sigmas.max()
        if config["timestep_spacing"] not in ("linspace", "trailing"):
            max_sigma = np.sqrt(max_sigma * max_sigma + _F32(1.0))
        self.init_noise_sigma: float = float(max_sigma)
        _check_first_timestep(self.timesteps)
        self._index = 0

    def scale_model_input(self, sample: np.ndarray) -> np.ndarray:
        """The UNet's input at the current step: sample / (sigma**2 + 1) ** 0.5, in float32."""
        _check_not_done(self._index, self.timesteps)
        sigma = self.sigmas[self._index]
        return np.asarray(sample, dtype=_F32) / np.sqrt(sigma * sigma + _F32(1.0))

    def add_noise(self, original: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """`original` latents noised to the current timestep, as diffusers' add_noise for the image modes:
        original + noise * sigma, in float32."""
        return np.asarray(original, dtype=_F32) + np.asarray(noise, dtype=_F32) * self.sigmas[self._index]

    def _data(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        """The data prediction (x0) at noise level `sigma`."""
        if self.prediction_type == "v_prediction":
            # denoised = model_output * c_out + input * c_skip, both scalings float32 scalars
            scale = sigma * sigma + _F32(1.0)
            return model_output * (-sigma / np.sqrt(scale)) + sample / scale
        return sample - sigma * model_output

    def _slope(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        """d sample / d sigma at noise level `sigma`: (sample - x0) / sigma."""
        return (sample - self._data(np.asarray(model_output, dtype=_F32), sample, sigma)) / sigma

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep, from the model's output at the current one (float32).

        diffusers' step with s_churn 0: gamma 0, so sigma_hat is sigma and no noise is drawn.
        """
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        sigma = self.sigmas[self._index]
        derivative = self._slope(model_output, sample, sigma)
        dt = self.sigmas[self._index + 1] - sigma
        self._index += 1
        return sample + derivative * dt


class Heun(EulerDiscrete):
    """Heun over `steps` steps for a model's scheduler config: Euler's timesteps and sigmas, each
    step after the first taken twice (`timesteps` holds 2 x steps - 1 entries, one model
    evaluation each): an Euler step to the next sigma, then at that sigma the model again and
    the step taken over from the same start with the mean of the two slopes; the last step, to
    sigma 0, is Euler's alone. An image mode begins at `order` times the step it enters at."""

    order = 2

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "heun"):
        super().__init__(scheduler_config, steps, sampler)
        config = self.config
        self.clip: float | None = _clip_range(config)
        # Every sigma but the first and the end twice (the second pass of each step, then the
        # first pass of the next), and every timestep but the first.
        self.sigmas = np.concatenate([self.sigmas[:1], np.repeat(self.sigmas[1:-1], 2), self.sigmas[-1:]])
        self.timesteps = np.concatenate([self.timesteps[:1], np.repeat(self.timesteps[1:], 2)])
        self._first: tuple | None = None  # a step's first pass: (its start, its slope, its dt)

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample after this pass (float32): the Euler step of a step's first pass, or the
        step taken over with the slopes' mean in its second."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        if self._first is None:
            sigma, sigma_next = self.sigmas[self._index], self.sigmas[self._index + 1]
            slope = self._slope(model_output, sample, sigma)
            dt = sigma_next - sigma
            self._first = (sample, slope, dt)
            prev_sample = sample + slope * dt
        else:
            sigma_next = self.sigmas[self._index]
            start, first_slope, dt = self._first
            slope = self._slope(model_output, sample, sigma_next)
            prev_sample = start + ((first_slope + slope) / _F32(2.0)) * dt
            self._first = None
        self._index += 1
        return prev_sample

    def _data(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        """Euler's data prediction, clipped where the schedule asks (`clip_sample`)."""
        return _clipped(super()._data(model_output, sample, sigma), self.clip)


class LMS(EulerDiscrete):
    """LMS over `steps` steps for a model's scheduler config: Euler's timesteps, sigmas, starting
    noise and UNet input (with Karras sigmas for "lms_karras"), and a step that combines the
    last four slopes (fewer at the start) with the linear multistep coefficients, each the
    integral over the step of a Lagrange basis polynomial in sigma (diffusers integrates them
    numerically; this port exactly)."""

    ORDER = 4  # diffusers' default, which its pipelines leave as it is

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "lms"):
        super().__init__(scheduler_config, steps, sampler)
        self._slopes: list[np.ndarray] = []  # the last ORDER slopes, oldest first

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        slope = self._slope(model_output, sample, self.sigmas[self._index])
        self._slopes = (self._slopes + [slope])[-self.ORDER:]
        # As diffusers: the order counts the steps since the schedule's start, not the slopes
        # kept (an image mode's first steps weigh the slopes they have by a longer polynomial's).
        order = min(self._index + 1, self.ORDER)
        change = _F32(0.0)
        for current, earlier in zip(range(order), reversed(self._slopes)):
            change = change + _F32(self._coefficient(order, current)) * earlier
        self._index += 1
        return sample + change

    def _coefficient(self, order: int, current: int) -> float:
        """The integral from this step's sigma to the next of the Lagrange basis polynomial that is
        1 at the sigma `current` steps back and 0 at the others of the last `order`."""
        t, sigmas = self._index, self.sigmas.astype(np.float64)
        others = [sigmas[t - k] for k in range(order) if k != current]
        basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        basis = basis / np.prod([sigmas[t - current] - s for s in others])
        integral = basis.integ()
        return float(integral(sigmas[t + 1]) - integral(sigmas[t]))


class DPM2(EulerDiscrete):
    """DPM2 (k-diffusion's sample_dpm_2, diffusers' KDPM2DiscreteScheduler) over `steps` steps for
    a model's scheduler config: Euler's timesteps and sigmas, each step but the last taken in two
    passes (`timesteps` holds 2 x steps - 1 entries, one model evaluation each): a half step in
    log sigma to the geometric midpoint, then at the midpoint the model again and the whole step
    taken from the same start with the midpoint's slope; the last step, to sigma 0, is Euler's
    alone. An image mode begins at `order` times the step it enters at."""

    order = 2

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "dpm2"):
        super().__init__(scheduler_config, steps, sampler)
        sigmas = self.sigmas  # one per step, then 0 (float32)
        # Per step: its midpoint, where its second pass lands and the noise it adds there.
        with np.errstate(divide="ignore", invalid="ignore"):
            self.middles, self.ends, self.ups = self._passes(sigmas[:-1], sigmas[1:])
        self.middles[-1] = 0.0  # the last step's one pass lands on sigma 0 (diffusers zeroes DPM2 a's NaN there)
        middle_t = _sigma_to_t(self.middles[:-1], np.log(self.train_sigmas)).astype(_F32)
        # As diffusers: every sigma but the first and the end twice (the second pass of each step,
        # then the first pass of the next), and each step's midpoint timestep before the next's.
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:], 2), sigmas[-1:]])
        self.timesteps = np.concatenate([self.timesteps[:1], np.stack([middle_t, self.timesteps[1:]], axis=1).ravel()])
        self._start: np.ndarray | None = None  # a step's start, while its second pass is to come

    @staticmethod
    def _passes(sigmas: np.ndarray, following: np.ndarray) -> tuple:
        """(the sigma of each step's second pass, where that pass lands, the scale of the fresh
        noise it adds there: None), one per step from `sigmas` to `following` (float32): the
        geometric midpoint, as diffusers works it out (torch's lerp of the logs at 0.5, from the
        following sigma's, then exp), and the following sigma."""
        return np.exp(_half_way(np.log(following), np.log(sigmas))).astype(_F32), following, None

    @property
    def wants_noise(self) -> bool:
        """Whether the next pass takes fresh noise: a second pass of a stochastic step (DPM2 a's)."""
        return self.stochastic and self._start is not None

    def scale_model_input(self, sample: np.ndarray) -> np.ndarray:
        """The UNet's input at the current pass: sample / (sigma**2 + 1) ** 0.5, sigma the step's
        own in its first pass and the midpoint in its second."""
        _check_not_done(self._index, self.timesteps)
        sigma = self.sigmas[self._index] if self._start is None else self.middles[self._index // 2]
        return np.asarray(sample, dtype=_F32) / np.sqrt(sigma * sigma + _F32(1.0))

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample after this pass (float32): at the midpoint after a step's first pass, at the
        step's end after its second (DPM2 a's: plus `noise`, this pass's fresh noise, times the
        step's sigma_up)."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        step = self._index // 2  # passes 2i and 2i + 1 are step i's
        sigma, middle = self.sigmas[2 * step], self.middles[step]
        if self._start is None:
            slope = self._slope(model_output, sample, sigma)
            self._start = sample
            prev_sample = sample + slope * (middle - sigma)
        else:
            slope = self._slope(model_output, sample, middle)
            prev_sample = self._start + slope * (self.ends[step] - sigma)
            if self.stochastic:
                prev_sample = prev_sample + self._fresh(noise, sample) * self.ups[step]
            self._start = None
        self._index += 1
        return prev_sample


class DPM2Ancestral(DPM2):
    """DPM2 a (k-diffusion's sample_dpm_2_ancestral, diffusers' KDPM2AncestralDiscreteScheduler:
    "dpm2_a") over `steps` steps for a model's scheduler config: DPM2's passes, but each step's
    second pass lands on the step's sigma_down (Euler a's) and adds `noise`, its fresh noise,
    times its sigma_up, and its midpoint is the one between the step's sigma and sigma_down.
    Fresh noise is taken in second passes alone (`wants_noise`): diffusers draws it there, none
    for a step's first pass nor for the last step, which has no second pass."""

    stochastic = True

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "dpm2_a"):
        super().__init__(scheduler_config, steps, sampler)

    @staticmethod
    def _passes(sigmas: np.ndarray, following: np.ndarray) -> tuple:
        """(each step's midpoint, its sigma_down, its sigma_up), one per step: the midpoint from
        the step's sigma toward its sigma_down (torch's lerp of the logs at 0.5, then exp)."""
        ups, downs = _ancestral(sigmas, following)
        return np.exp(_half_way(np.log(sigmas), np.log(downs))).astype(_F32), downs, ups


class DPMSolverSDE(EulerDiscrete):
    """DPM++ SDE (k-diffusion's sample_dpmpp_sde; diffusers' DPMSolverSDEScheduler) with Karras
    sigmas ("dpmpp_sde_karras") over `steps` steps for a model's scheduler config: Euler's Karras
    sigmas and timesteps, each step but the last taken in two passes (`timesteps` holds
    2 x steps - 1 entries, one model evaluation each). The first pass goes to the step's midpoint
    in log sigma, the second takes the step again from its start with the midpoint's data
    prediction; each lands on its sigma_down and adds noise times its sigma_up. The last step, to
    sigma 0, is Euler's alone. An image mode begins at `order` times the step it enters at.

    The noise is not the generator's: a pass's is the increment of each picture's Brownian motion
    over the pass, over the square root of its length (brownian_tree.BrownianTree, one per seed
    of `seeds`, as build_scheduler seeds diffusers'; one tree of the batch's shape for a single
    seed, as diffusers does). `wants_noise` is never true. diffusers takes the logs and
    exponentials of a pass's sigmas in torch's float32 (not correctly rounded); this port takes
    them correctly rounded, so a time the tree is asked about can round to another 6th decimal
    than diffusers' and that pass's noise differ a little (tests/test_numpy_sampler.py measures
    how much)."""

    order = 2

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "dpmpp_sde_karras",
                 seeds: list[int] | None = None):
        super().__init__(scheduler_config, steps, sampler)
        if not self.config["use_karras_sigmas"]:
            raise ValueError("the NumPy DPM++ SDE runs with Karras sigmas only")
        # The steps' timesteps and, between them, each step's midpoint in log sigma (diffusers'
        # _second_order_timesteps), from the float64 sigmas; float64, as diffusers keeps them.
        log_train, t = np.log(self.train_sigmas), -np.log(self.exact_sigmas)
        middle_t = _sigma_to_t(np.exp(-(t[:-1] + np.diff(t) * 0.5)), log_train)
        step_t = _sigma_to_t(self.exact_sigmas, log_train)
        self.timesteps = np.concatenate([step_t[:1], np.stack([middle_t, step_t[1:]], axis=1).ravel()])
        self.sigmas = np.concatenate([self.sigmas[:1], np.repeat(self.sigmas[1:-1], 2), self.sigmas[-1:]])
        self.seeds = None if seeds is None else [int(seed) for seed in seeds]
        self._trees: list[BrownianTree] | None = None
        self._start: np.ndarray | None = None  # a step's start, while its second pass is to come
        self._middle: np.float32 | None = None  # and the sigma its first pass landed on

    def scale_model_input(self, sample: np.ndarray) -> np.ndarray:
        """The UNet's input at the current pass: sample / (sigma**2 + 1) ** 0.5, sigma the step's
        own in its first pass and the midpoint in its second."""
        _check_not_done(self._index, self.timesteps)
        sigma = self.sigmas[self._index] if self._start is None else self._middle
        return np.asarray(sample, dtype=_F32) / np.sqrt(sigma * sigma + _F32(1.0))

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample after this pass (float32): at the midpoint after a step's first pass, at the
        step's end after its second, each with its Brownian noise; Euler's step to sigma 0 last."""
        _check_not_done(self._index, self.timesteps)
        sample, model_output = np.asarray(sample, dtype=_F32), np.asarray(model_output, dtype=_F32)
        if self._trees is None:
            self._trees = self._plant(sample.shape)
        first = self._start is None
        index = self._index
        sigma, sigma_next = self.sigmas[index:index + 2] if first else self.sigmas[index - 1:index + 1]
        self._index += 1
        if sigma_next == 0:  # the last step: Euler's
            return sample + ((sample - self._data(model_output, sample, sigma)) / sigma) * (sigma_next - sigma)
        t, t_next = _neg_log(sigma), _neg_log(sigma_next)
        t_middle = t + (t_next - t) * _F32(0.5)
        x0 = self._data(model_output, sample, sigma if first else _exp_neg(t_middle))
        if first:
            t_next = t_middle
        else:
            sample = self._start
        sigma_from, sigma_to = _exp_neg(t), _exp_neg(t_next)
        up = min(sigma_to, np.sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
                                   / (sigma_from * sigma_from)))
        t_down = _neg_log(np.sqrt(sigma_to * sigma_to - up * up))
        prev_sample = (_exp_neg(t_down) / _exp_neg(t)) * sample - _F32(math.expm1(t - t_down)) * x0
        prev_sample = prev_sample + self._noise(sigma_from, sigma_to) * up
        self._start, self._middle = (sample, sigma_to) if first else (None, None)
        return prev_sample

    def _plant(self, shape: tuple[int, ...]) -> list[BrownianTree]:
        """The Brownian trees over the schedule's sigmas, as diffusers makes them at the first step:
        one a picture (of a picture's shape) for several seeds, or one of the whole `shape`."""
        if self.seeds is None:
            raise ValueError("DPM++ SDE Karras draws its noise from each picture's seed: pass `seeds`")
        if len(self.seeds) > 1 and len(self.seeds) != shape[0]:
            raise ValueError(f"{len(self.seeds)} seeds for {shape[0]} pictures")
        low, high = float(self.sigmas[self.sigmas > 0].min()), float(self.sigmas.max())
        if len(self.seeds) == 1:
            return [BrownianTree(self.seeds[0], low, high, shape)]
        return [BrownianTree(seed, low, high, shape[1:]) for seed in self.seeds]

    def _noise(self, sigma_from: np.float32, sigma_to: np.float32) -> np.ndarray:
        """A pass's noise: minus the Brownian increment from sigma_to up to sigma_from, over
        sqrt(|sigma_to - sigma_from|) (diffusers' BrownianTreeNoiseSampler)."""
        increments = [tree(sigma_to, sigma_from) for tree in self._trees]
        w = increments[0] if len(increments) == 1 else np.stack(increments)
        return (w * _F32(-1.0)) / np.sqrt(np.abs(sigma_to - sigma_from))


class EulerAncestral(EulerDiscrete):
    """Euler a over `steps` steps for a model's scheduler config: Euler's timesteps, sigmas, starting
    noise and UNet input (without Karras sigmas), and a step that goes down to sigma_down and adds
    `noise` (this step's fresh noise) times sigma_up, sigma_down**2 + sigma_up**2 being the next
    sigma squared; the last step lands on the data prediction (sigma_up 0; diffusers still draws)."""

    stochastic = True

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "euler_a"):
        super().__init__(scheduler_config, steps, sampler)

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one
        and this step's fresh noise."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        noise = self._fresh(noise, sample)
        sigma_from = self.sigmas[self._index]
        sigma_up, sigma_down = _ancestral(sigma_from, self.sigmas[self._index + 1])
        derivative = self._slope(model_output, sample, sigma_from)
        self._index += 1
        return sample + derivative * (sigma_down - sigma_from) + noise * sigma_up


class DDIM(_OverAlphas):
    """DDIM over `steps` steps for a model's scheduler config; `eta` (0 to 1) the share of DDPM's
    noise each step adds (stochastic above 0). It leaves the UNet's input as it is and starts
    from the noise as drawn (init_noise_sigma 1)."""

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "ddim", eta: float = 0.0):
        config = _configured(DDIM, sampler, scheduler_config, steps)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be from 0 to 1, not {eta}")
        self.prediction_type: str = config["prediction_type"]
        self.clip: float | None = _clip_range(config)
        self._alphas_from(config)
        self.timesteps: np.ndarray = _ddim_timesteps(config, steps)
        self.stride: int = int(config["num_train_timesteps"]) // steps  # diffusers' prev_timestep, any spacing
        self.eta: float = eta
        self.stochastic = eta > 0
        self.init_noise_sigma: float = 1.0
        self._index = 0

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one
        (and, at eta above 0, this step's fresh noise)."""
        _check_not_done(self._index, self.timesteps)
        model_output = np.asarray(model_output, dtype=_F32)
        sample = np.asarray(sample, dtype=_F32)
        if self.stochastic:
            noise = self._fresh(noise, sample)
        timestep = int(self.timesteps[self._index])
        previous = timestep - self.stride
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha
        beta_t = _F32(1.0) - alpha_t
        x0 = self._data(model_output, sample, alpha_t)
        epsilon = model_output  # the noise prediction, taken before x0 is clipped
        if self.prediction_type == "v_prediction":
            epsilon = alpha_t ** _F32(0.5) * model_output + beta_t ** _F32(0.5) * sample
        variance = ((_F32(1.0) - alpha_prev) / beta_t) * (_F32(1.0) - alpha_t / alpha_prev)
        spread = _F32(self.eta) * variance ** _F32(0.5)
        prev_sample = alpha_prev ** _F32(0.5) * x0 + (_F32(1.0) - alpha_prev - spread**2) ** _F32(0.5) * epsilon
        if self.stochastic:
            prev_sample = prev_sample + spread * noise
        self._index += 1
        return prev_sample


class DDPM(_OverAlphas):
    """DDPM's ancestral sampling (diffusers' DDPMScheduler at its defaults, "ddpm") over `steps`
    steps for a model's scheduler config: DDIM's timesteps, and at each step the mean of the
    posterior q(x_prev | x_t, x0) from the data prediction (clipped where the schedule asks) and
    the sample, plus its standard deviation ("fixed_small" variance) times `noise`, this step's
    fresh noise, drawn at every step whose timestep is above 0 (`wants_noise`: a schedule that
    ends on timestep 0, "linspace" or "leading" without an offset, draws none for its last).
    Each step goes to the next timestep of the schedule, the last to alpha 1. It leaves the
    UNet's input as it is and starts from the noise as drawn."""

    stochastic = True

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "ddpm"):
        config = _configured(DDPM, sampler, scheduler_config, steps)
        self.prediction_type: str = config["prediction_type"]
        self.clip: float | None = _clip_range(config)
        self._alphas_from(config)
        self.timesteps: np.ndarray = _ddim_timesteps(config, steps)
        self.init_noise_sigma: float = 1.0
        self._index = 0

    @property
    def wants_noise(self) -> bool:
        """Whether the next step takes fresh noise: diffusers draws it where the timestep is above 0."""
        return self._index < len(self.timesteps) and self.timesteps[self._index] > 0

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one
        and this step's fresh noise (none where the timestep is 0)."""
        _check_not_done(self._index, self.timesteps)
        model_output = np.asarray(model_output, dtype=_F32)
        sample = np.asarray(sample, dtype=_F32)
        if self.wants_noise:
            noise = self._fresh(noise, sample)
        alpha_t = self.alphas_cumprod[self.timesteps[self._index]]
        following = self._index + 1  # diffusers' previous_timestep: the schedule's next entry
        alpha_prev = self.alphas_cumprod[self.timesteps[following]] if following < len(self.timesteps) else self.final_alpha
        beta_t, beta_prev = _F32(1.0) - alpha_t, _F32(1.0) - alpha_prev
        current_alpha = alpha_t / alpha_prev
        current_beta = _F32(1.0) - current_alpha
        x0 = self._data(model_output, sample, alpha_t)
        x0_coeff = (alpha_prev ** _F32(0.5) * current_beta) / beta_t
        sample_coeff = current_alpha ** _F32(0.5) * beta_prev / beta_t
        prev_sample = x0_coeff * x0 + sample_coeff * sample
        if self.wants_noise:
            variance = np.maximum((_F32(1.0) - alpha_prev) / (_F32(1.0) - alpha_t) * current_beta, _F32(1e-20))
            prev_sample = prev_sample + variance ** _F32(0.5) * noise
        self._index += 1
        return prev_sample


class PLMS(_OverAlphas):
    """PLMS (diffusers' PNDMScheduler with its PRK steps skipped, as reverie's "plms" row asks)
    over `steps` steps for a model's scheduler config: linear multistep over the model's noise
    predictions, up to fourth order. Its first step is taken twice (`timesteps` holds steps + 1
    entries, one model evaluation each): an Euler-like step, then the same step again from the
    same start with the two predictions' mean. It leaves the UNet's input as it is and starts
    from the noise as drawn."""

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "plms"):
        config = _configured(PLMS, sampler, scheduler_config, steps)
        self.prediction_type: str = config["prediction_type"]
        self._alphas_from(config)
        spaced = _ddim_timesteps(config, steps)[::-1]  # PNDM spaces them as DDIM does, oldest first
        # The second timestep twice: the first step's two passes (PNDM's plms_timesteps).
        self.timesteps: np.ndarray = np.concatenate([spaced[:-1], spaced[-2:-1], spaced[-1:]])[::-1].astype(np.int64)
        self.stride: int = int(config["num_train_timesteps"]) // steps
        self.init_noise_sigma: float = 1.0
        self._index = 0
        self._outputs: list[np.ndarray] = []  # the last four noise predictions, oldest first (PNDM's ets)
        self._passes = 0  # passes done (PNDM's counter): the second is the first step's second pass
        self._start: np.ndarray | None = None  # the first step's start, for its second pass

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one."""
        _check_not_done(self._index, self.timesteps)
        model_output = np.asarray(model_output, dtype=_F32)
        sample = np.asarray(sample, dtype=_F32)
        timestep = int(self.timesteps[self._index])
        previous = timestep - self.stride
        if self._passes != 1:
            self._outputs = self._outputs[-3:] + [model_output]
        else:  # the first step again, from its start
            previous, timestep = timestep, timestep + self.stride
        e = self._outputs
        if len(e) == 1 and self._passes == 0:
            self._start = sample
        elif len(e) == 1 and self._passes == 1:
            model_output = (model_output + e[-1]) / _F32(2.0)
            sample, self._start = self._start, None
        elif len(e) == 2:
            model_output = (_F32(3.0) * e[-1] - e[-2]) / _F32(2.0)
        elif len(e) == 3:
            model_output = (_F32(23.0) * e[-1] - _F32(16.0) * e[-2] + _F32(5.0) * e[-3]) / _F32(12.0)
        else:
            model_output = _F32(1 / 24) * (_F32(55.0) * e[-1] - _F32(59.0) * e[-2] + _F32(37.0) * e[-3]
                                           - _F32(9.0) * e[-4])
        self._passes += 1
        self._index += 1
        return self._previous_sample(sample, timestep, previous, model_output)

    def _previous_sample(self, sample: np.ndarray, timestep: int, previous: int, output: np.ndarray) -> np.ndarray:
        """PNDM's step from `timestep` to `previous` with the combined noise prediction `output`."""
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha
        beta_t, beta_prev = _F32(1.0) - alpha_t, _F32(1.0) - alpha_prev
        if self.prediction_type == "v_prediction":
            output = alpha_t ** _F32(0.5) * output + beta_t ** _F32(0.5) * sample
        sample_coeff = (alpha_prev / alpha_t) ** _F32(0.5)
        denominator = alpha_t * beta_prev ** _F32(0.5) + (alpha_t * beta_t * alpha_prev) ** _F32(0.5)
        return sample_coeff * sample - (alpha_prev - alpha_t) * output / denominator


class LCM(_OverAlphas):
    """LCM's multistep sampling over `steps` steps for a model's scheduler config: at each step the
    consistency function's data prediction (the data prediction mixed with the sample by the
    boundary scalings c_skip and c_out), noised again to the next timestep with fresh noise, but
    for the last step, which returns it. Its timesteps are `steps` of the `original_inference_steps`
    the model was distilled on, evenly spaced from the noisiest; it leaves the UNet's input as it
    is and starts from the noise as drawn."""

    stochastic = True

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "lcm"):
        config = _configured(LCM, sampler, scheduler_config, steps)
        original = int(config["original_inference_steps"])
        train_steps = int(config["num_train_timesteps"])
        if not 1 <= original <= train_steps:
            raise ValueError(f"original_inference_steps must be from 1 to {train_steps}, not {original}")
        if steps > original:
            raise ValueError(f"the model was distilled on {original} steps: take at most {original}, not {steps}")
        self.prediction_type: str = config["prediction_type"]
        self.clip: float | None = _clip_range(config)
        self._alphas_from(config)
        # The distillation's schedule, noisiest first, and `steps` evenly spaced places on it.
        origin = (np.arange(1, original + 1) * (train_steps // original) - 1)[::-1]
        places = np.floor(np.linspace(0, original, num=steps, endpoint=False)).astype(np.int64)
        self.timesteps: np.ndarray = origin[places].astype(np.int64)
        self.timestep_scaling: float = float(config["timestep_scaling"])
        self.init_noise_sigma: float = 1.0
        self._index = 0

    @property
    def wants_noise(self) -> bool:
        """Every step but the last takes fresh noise (diffusers draws none for the last)."""
        return self._index != len(self.timesteps) - 1

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one
        and this step's fresh noise (none at the last step, which returns the data prediction)."""
        _check_not_done(self._index, self.timesteps)
        model_output = np.asarray(model_output, dtype=_F32)
        sample = np.asarray(sample, dtype=_F32)
        last = not self.wants_noise
        if not last:
            noise = self._fresh(noise, sample)
        timestep = int(self.timesteps[self._index])
        x0 = self._data(model_output, sample, self.alphas_cumprod[timestep])
        # The boundary scalings (sigma_data 0.5) at the timestep times timestep_scaling, in float32.
        scaled = _F32(timestep) * _F32(self.timestep_scaling)
        spread = scaled * scaled + _F32(0.25)
        c_skip, c_out = _F32(0.25) / spread, scaled / spread ** _F32(0.5)
        denoised = c_out * x0 + c_skip * sample
        self._index += 1
        if last:
            return denoised
        following = int(self.timesteps[self._index])
        alpha_prev = self.alphas_cumprod[following] if following >= 0 else self.final_alpha
        return alpha_prev ** _F32(0.5) * denoised + (_F32(1.0) - alpha_prev) ** _F32(0.5) * noise


class UniPC(_OverSigmas):
    """UniPC over `steps` steps for a model's scheduler config: the data-prediction UniP-2
    predictor (B(h) = e^h - 1, "bh2") over the same timesteps and sigmas as DPM++ 2M, warmed up
    at first order and ending at first order, and before every step but the first the UniC
    corrector, which mends the sample with the model's output at it (so it costs no evaluation
    more). It leaves the UNet's input as it is and starts from the noise as drawn."""

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "unipc"):
        config = _configured(UniPC, sampler, scheduler_config, steps)
        self.prediction_type: str = config["prediction_type"]
        self._schedule(config, steps)
        self._index = 0
        self._outputs: list[np.ndarray] = []  # the last two data predictions, oldest first
        self._last_sample: np.ndarray | None = None  # the sample the last predictor started from
        self._order = 0  # the last predictor's order

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one:
        the sample corrected first (after the first step), then the predictor."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        x0 = self._data(model_output, sample)
        if self._last_sample is not None:
            sample = self._corrected(x0, sample)
        self._outputs = (self._outputs + [x0])[-2:]
        self._order = min(2, len(self.timesteps) - self._index, len(self._outputs))
        self._last_sample = sample
        prev_sample = self._predicted(sample)
        self._index += 1
        return prev_sample

    def _coefficients(self, to: int, since: int) -> tuple:
        """(alpha_t, sigma_t, sigma_s0, h, B(h)) from sigma number `since` to number `to`."""
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[to])
        alpha_s0, sigma_s0 = _alpha_sigma(self.sigmas[since])
        h = _lambda(alpha_t, sigma_t) - _lambda(alpha_s0, sigma_s0) if self.sigmas[to] > 0 else _F32(np.inf)
        return alpha_t, sigma_t, sigma_s0, h, np.expm1(-h)

    def _predicted(self, sample: np.ndarray) -> np.ndarray:
        """UniP: the sample at the next sigma from the data predictions so far (this step's last)."""
        alpha_t, sigma_t, sigma_s0, h, b_h = self._coefficients(self._index + 1, self._index)
        m0 = self._outputs[-1]
        x_t = (sigma_t / sigma_s0) * sample - (alpha_t * b_h) * m0
        if self._order == 2:  # rho 0.5 on the difference with the previous step's prediction
            r = (self._lambda_at(self._index - 1) - self._lambda_at(self._index)) / h
            x_t = x_t - (alpha_t * b_h) * (_F32(0.5) * ((self._outputs[-2] - m0) / r))
        return x_t

    def _corrected(self, x0: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """UniC: the current sample made again from the last predictor's start with this step's
        data prediction `x0` as one more point (the last predictor's order, plus one)."""
        alpha_t, sigma_t, sigma_s0, h, b_h = self._coefficients(self._index, self._index - 1)
        m0 = self._outputs[-1]
        x_t = (sigma_t / sigma_s0) * self._last_sample - (alpha_t * b_h) * m0
        change = x0 - m0
        if self._order == 1:
            return x_t - (alpha_t * b_h) * (_F32(0.5) * change)
        r = (self._lambda_at(self._index - 2) - self._lambda_at(self._index - 1)) / h
        hh = -h
        phi = b_h / hh - _F32(1.0)  # h phi_2 / h, then phi_3's
        b1 = phi / b_h
        phi = phi / hh - _F32(0.5)
        b2 = phi * _F32(2.0) / b_h
        rho = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]], dtype=_F32), np.array([b1, b2], dtype=_F32))
        earlier = (self._outputs[-2] - m0) / r
        return x_t - (alpha_t * b_h) * (_F32(rho[0]) * earlier + _F32(rho[1]) * change)


class DEIS(_OverSigmas):
    """DEIS over `steps` steps for a model's scheduler config (diffusers' DEISMultistepScheduler at
    its defaults, "deis"): the second-order log-rho multistep solver over the noise predictions
    (the model's output made a noise prediction through its data prediction), its coefficients
    the integrals over rho = sigma of the Lagrange polynomial through the last two steps, taken
    in log rho; over DPM++ 2M's timesteps and sigmas but for the last sigma, the first training
    sigma's instead of 0 (so the picture keeps that little noise). Its first step is first order,
    and with fewer than 15 steps its last too. It leaves the UNet's input as it is and starts
    from the noise as drawn."""

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "deis"):
        config = _configured(DEIS, sampler, scheduler_config, steps)
        self.prediction_type: str = config["prediction_type"]
        self._schedule(config, steps, sigma_min_last=True)
        self._index = 0
        self._previous: np.ndarray | None = None  # the last step's noise prediction

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        alpha_s0, sigma_s0 = _alpha_sigma(self.sigmas[self._index])
        epsilon = (sample - alpha_s0 * self._data(model_output, sample)) / sigma_s0
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[self._index + 1])
        # As diffusers: first order at the first step and, with fewer than 15 steps, at the last.
        last = self._index == len(self.timesteps) - 1 and len(self.timesteps) < 15
        if self._previous is None or last:
            h = _lambda(alpha_t, sigma_t) - _lambda(alpha_s0, sigma_s0)
            prev_sample = (alpha_t / alpha_s0) * sample - (sigma_t * (_F32(math.exp(h)) - _F32(1.0))) * epsilon
        else:
            alpha_s1, sigma_s1 = _alpha_sigma(self.sigmas[self._index - 1])
            rho_t, rho_s0, rho_s1 = sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1
            coef1 = _deis_integral(rho_t, rho_s0, rho_s1) - _deis_integral(rho_s0, rho_s0, rho_s1)
            coef2 = _deis_integral(rho_t, rho_s1, rho_s0) - _deis_integral(rho_s0, rho_s1, rho_s0)
            prev_sample = alpha_t * (sample / alpha_s0 + coef1 * epsilon + coef2 * self._previous)
        self._previous = epsilon
        self._index += 1
        return prev_sample


class DPMSolver2S(_OverSigmas):
    """DPM++ 2S Karras (diffusers' DPMSolverSinglestepScheduler with Karras sigmas, reverie's
    "dpmpp_2s_karras" row) over `steps` steps for a model's scheduler config: the singlestep
    second-order DPM-Solver++ (midpoint) over DPM++ 2M Karras's timesteps and sigmas. The steps go
    in pairs: the first of a pair a first-order step, whose sample serves only as the model's
    input at the pair's middle timestep; the second a second-order step from the pair's start
    with both data predictions. As diffusers' order list: an odd step count ends on a lone
    first-order step, an even one on two, so the last step lands on the data prediction; an image
    mode's first step is first order wherever it enters. It leaves the UNet's input as it is
    and starts from the noise as drawn."""

    def __init__(self, scheduler_config: dict, steps: int, sampler: str = "dpmpp_2s_karras"):
        config = _configured(DPMSolver2S, sampler, scheduler_config, steps)
        self.prediction_type: str = config["prediction_type"]
        self._schedule(config, steps, karras=True)
        # get_order_list with lower_order_final (which final_sigmas_type "zero" turns on): 1, 2, ...
        # then 1 (odd counts) or 1, 1 (even ones).
        self.orders: list[int] = [1, 2] * ((steps - 1) // 2) + [1] * (2 - steps % 2)
        self._index = 0
        self._pair: tuple | None = None  # (the sample the last first-order step started from, its data prediction)

    def step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The sample at the next timestep (float32), from the model's output at the current one."""
        _check_not_done(self._index, self.timesteps)
        sample = np.asarray(sample, dtype=_F32)
        x0 = self._data(model_output, sample)
        if self._pair is None or self.orders[self._index] == 1:  # diffusers' first step is first order
            self._pair = (sample, x0)
            if self.sigmas[self._index + 1] == 0:  # the last step: what the first-order formula gives there, exactly
                prev_sample = x0
            else:
                prev_sample = self._dpmpp(sample, self._index, self._step_size(self._index), x0)
        else:  # from the pair's start, a sigma back, with the data predictions there and here
            start, earlier = self._pair
            h = self._step_size(self._index - 1)
            prev_sample = self._dpmpp(start, self._index - 1, h, earlier, self._difference(x0, earlier, h))
        self._index += 1
        return prev_sample


_SCHEDULERS = {"DPMSolverMultistepScheduler": DPMSolver2M, "EulerDiscreteScheduler": EulerDiscrete,
               "EulerAncestralDiscreteScheduler": EulerAncestral, "DDIMScheduler": DDIM, "LCMScheduler": LCM,
               "UniPCMultistepScheduler": UniPC, "HeunDiscreteScheduler": Heun, "PNDMScheduler": PLMS,
               "LMSDiscreteScheduler": LMS, "KDPM2DiscreteScheduler": DPM2,
               "KDPM2AncestralDiscreteScheduler": DPM2Ancestral, "DDPMScheduler": DDPM,
               "DEISMultistepScheduler": DEIS, "DPMSolverSinglestepScheduler": DPMSolver2S,
               "DPMSolverSDEScheduler": DPMSolverSDE}
_OPTION_TABLES = {DPMSolver2M: (_FIXED_OPTIONS, _DPM_OPTIONS),
                  EulerDiscrete: (_EULER_FIXED_OPTIONS, _PORTED_OPTIONS),  # its ported options: DPM's, the same defaults
                  EulerAncestral: (_EULER_A_FIXED_OPTIONS, _SCHEDULE_OPTIONS),
                  DDIM: (_DDIM_FIXED_OPTIONS, _DDIM_OPTIONS),
                  LCM: (_LCM_FIXED_OPTIONS, _LCM_OPTIONS),
                  UniPC: (_UNIPC_FIXED_OPTIONS, _SCHEDULE_OPTIONS),  # its ported options: the schedule's alone
                  Heun: (_HEUN_FIXED_OPTIONS, _HEUN_OPTIONS),
                  PLMS: (_PLMS_FIXED_OPTIONS, _PLMS_OPTIONS),
                  LMS: (_LMS_FIXED_OPTIONS, _PORTED_OPTIONS),  # its ported options: Euler's, the same defaults
                  DPM2: (_HEUN_FIXED_OPTIONS, _DPM2_OPTIONS),
                  DPM2Ancestral: (_HEUN_FIXED_OPTIONS, _DPM2_OPTIONS),  # its options: DPM2's, the same defaults
                  DDPM: (_DDPM_FIXED_OPTIONS, _DDPM_OPTIONS),
                  DEIS: (_DEIS_FIXED_OPTIONS, _SCHEDULE_OPTIONS),  # its ported options: the schedule's alone
                  DPMSolver2S: (_DPM_2S_FIXED_OPTIONS, _DPM_2S_OPTIONS),
                  DPMSolverSDE: (_SDE_FIXED_OPTIONS, _SDE_OPTIONS)}


def make_sampler(name: str, scheduler_config: dict, steps: int, eta: float = 0.0, seeds: list[int] | None = None):
    """The NumPy sampler for sampler `name` (or alias, or label) over `steps` steps, configured
    for a model's scheduler config as build_scheduler configures diffusers' scheduler; `eta`:
    DDIM's (the pipelines hand it to DDIM alone); `seeds`: the pictures', which seed DPM++ SDE
    Karras's Brownian trees as build_scheduler's `seeds` do (needed before its first step).

    ValueError if this port does not do that sampler, config or step count (BadRequest, as
    get_sampler, for a sampler reverie does not know).
    """
    sampler = get_sampler(name)
    cls = _SCHEDULERS.get(sampler.scheduler)
    if cls is None:
        raise ValueError(f"the NumPy samplers do not do {sampler.name} ({sampler.scheduler})")
    if cls is DDIM:
        return DDIM(scheduler_config, steps, sampler=sampler.name, eta=eta)
    if cls is DPMSolverSDE:
        return DPMSolverSDE(scheduler_config, steps, sampler=sampler.name, seeds=seeds)
    return cls(scheduler_config, steps, sampler=sampler.name)


def sampler_supported(name: str, scheduler_config: dict) -> bool:
    """Whether `make_sampler` runs sampler `name` (or alias, or label) for this model's scheduler config."""
    try:
        sampler = get_sampler(name)
        cls = _SCHEDULERS.get(sampler.scheduler)
        if cls is None:
            return False
        _options(sampler, scheduler_config, *_OPTION_TABLES[cls])
    except (BadRequest, ValueError):
        return False
    return True


def _sampler_of(name: str, cls: type) -> Sampler:
    """Sampler `name`'s row, which must be run by `cls`'s diffusers scheduler."""
    sampler = get_sampler(name)
    if _SCHEDULERS.get(sampler.scheduler) is not cls:
        raise ValueError(f"{cls.__name__} does not run {sampler.name} ({sampler.scheduler})")
    return sampler


def _options(sampler: Sampler, scheduler_config: dict, fixed: dict, ported: dict) -> dict:
    """The ported options of the scheduler build_scheduler makes; ValueError if others are off-default.

    build_scheduler gives diffusers the model's noise-schedule keys and the sampler's options.
    Keys that are not the scheduler's parameters (clip_sample, ...) are ignored, as from_config
    ignores them; so are its parameters that matter only once a fixed option is changed
    (dynamic_thresholding_ratio, sample_max_value, flow_shift, time_shift_type).
    """
    given = scheduler_options(sampler, scheduler_config)
    for key, default in fixed.items():
        if key in given and given[key] != default:
            raise ValueError(f"the NumPy {sampler.label} does not do {key}={given[key]!r}")
    options = ported | {k: v for k, v in given.items() if k in ported}
    for key, values in _CHOICES.items():
        if key in options and options[key] not in values:
            raise ValueError(f"the NumPy {sampler.label} does not do {key}={options[key]!r}")
    if options["trained_betas"] is None and options["beta_schedule"] not in ("linear", "scaled_linear"):
        raise ValueError(f"the NumPy {sampler.label} does not do beta_schedule={options['beta_schedule']!r}")
    if options["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(f"the NumPy {sampler.label} does not do prediction_type={options['prediction_type']!r}")
    if options.get("timestep_spacing", "linspace") not in ("leading", "trailing", "linspace"):
        raise ValueError(f"unknown timestep_spacing {options['timestep_spacing']!r}")
    return options


def _configured(cls: type, sampler: str, scheduler_config: dict, steps: int) -> dict:
    """The options `cls` runs sampler `sampler` with for this model's scheduler config
    (`_options`, from `cls`'s `_OPTION_TABLES`), `steps` checked against them."""
    config = _options(_sampler_of(sampler, cls), scheduler_config, *_OPTION_TABLES[cls])
    _check_steps(steps, config)
    return config


def _check_steps(steps: int, options: dict) -> None:
    train_steps = int(options["num_train_timesteps"])
    if not 1 <= steps < train_steps:
        raise ValueError(f"steps must be from 1 to {train_steps - 1}, not {steps}")


def _check_first_timestep(timesteps: np.ndarray) -> None:
    """diffusers starts at the second place of a repeated first timestep (index_for_timestep):
    a schedule where that would happen is not ported."""
    if np.count_nonzero(timesteps == timesteps[0]) > 1:
        raise ValueError(f"the first timestep ({timesteps[0]}) repeats: diffusers would skip a step")


def _check_not_done(index: int, timesteps: np.ndarray) -> None:
    if index >= len(timesteps):
        raise RuntimeError("all the steps are done")


def _betas(options: dict) -> np.ndarray:
    """The training betas in float32, as diffusers makes them with torch."""
    if options["trained_betas"] is not None:
        return np.asarray(options["trained_betas"], dtype=_F32)
    start, end = options["beta_start"], options["beta_end"]
    if options["beta_schedule"] == "scaled_linear":
        return _torch_linspace(start**0.5, end**0.5, options["num_train_timesteps"]) ** 2
    return _torch_linspace(start, end, options["num_train_timesteps"])


def _train_sigmas(options: dict) -> np.ndarray:
    """The training sigmas ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, float32, one per timestep."""
    alphas = _F32(1.0) - _betas(options)
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(_F32)  # torch accumulates in float64
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def _torch_linspace(start: float, end: float, count: int) -> np.ndarray:
    """torch.linspace in float32: a float32 step, each value from the nearer end, rounded once."""
    first, last = _F32(start), _F32(end)
    step = np.float64((last - first) / _F32(count - 1))
    index = np.arange(count)
    from_start = first + step * index
    from_end = last - step * (count - 1 - index)
    return np.where(index < count // 2, from_start, from_end).astype(_F32)


def _timesteps(options: dict, steps: int) -> np.ndarray:
    """DPMSolverMultistepScheduler's set_timesteps, for lambda_min_clipped at its default (no
    clipping): `steps + 1` spaced points, the last (0) dropped."""
    train_steps = options["num_train_timesteps"]
    spacing = options["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = train_steps // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + options["steps_offset"]
    return np.arange(train_steps, 0, -train_steps / steps).round().astype(np.int64) - 1


def _euler_timesteps(options: dict, steps: int) -> np.ndarray:
    """EulerDiscreteScheduler's set_timesteps (float32): unlike DPM's, `steps` spaced points, none
    dropped, so "linspace" ends at 0 and "leading" takes train_steps // steps apart."""
    train_steps = options["num_train_timesteps"]
    spacing = options["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, steps, dtype=_F32)[::-1].copy()
    if spacing == "leading":
        ratio = train_steps // steps
        timesteps = (np.arange(0, steps) * ratio).round()[::-1].astype(_F32)
        timesteps += options["steps_offset"]
        return timesteps
    timesteps = np.arange(train_steps, 0, -train_steps / steps).round().astype(_F32)
    timesteps -= 1
    return timesteps


def _ddim_timesteps(options: dict, steps: int) -> np.ndarray:
    """DDIMScheduler's set_timesteps (int64): `steps` points, "leading" train_steps // steps apart
    from 0 plus the offset, "trailing" from the end, "linspace" rounded."""
    train_steps = options["num_train_timesteps"]
    spacing = options["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, steps) * (train_steps // steps)).round()[::-1].astype(np.int64) + options["steps_offset"]
    return np.round(np.arange(train_steps, 0, -train_steps / steps)).astype(np.int64) - 1


def _karras(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """_convert_to_karras (from k-diffusion): `steps` sigmas from sigma_max down to sigma_min,
    evenly spaced in sigma ** (1 / rho), rho 7; float64, the ends' roots taken on Python floats."""
    rho = 7.0
    ramp = np.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """_sigma_to_t for each of `sigmas` (float64): its timestep on the training schedule, by
    linear interpolation of log sigma between the neighbouring training timesteps; float64.

    As diffusers' (which takes one sigma at a time): the training log sigmas are float32, the
    differences with log sigma float64, their spread (low - high) float32.
    """
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return (1 - w) * low_idx + w * high_idx


def _clip_range(config: dict) -> float | None:
    """The range a scheduler clips its data prediction to (`clip_sample_range`), None where it
    does not (`clip_sample` off, or not one of its options)."""
    return float(config["clip_sample_range"]) if config.get("clip_sample") else None


def _clipped(x0: np.ndarray, clip: float | None) -> np.ndarray:
    """`x0` clipped to [-clip, clip] (as it is where `clip` is None)."""
    return x0 if clip is None else np.clip(x0, -_F32(clip), _F32(clip))


def _ancestral(sigma_from, sigma_to) -> tuple:
    """(sigma_up, sigma_down) of an ancestral step from `sigma_from` to `sigma_to` (float32
    scalars or arrays): the noise added back and the sigma stepped down to, sigma_down**2 +
    sigma_up**2 being sigma_to**2 (k-diffusion's get_ancestral_step at eta 1, as diffusers has it)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** _F32(0.5)
    return sigma_up, (sigma_to**2 - sigma_up**2) ** _F32(0.5)


def _half_way(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """torch.lerp(start, end, 0.5) in float32: end - (end - start) * 0.5 (its formula for weights from a half up)."""
    return end - (end - start) * _F32(0.5)


def _deis_integral(t: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """DEIS's second-order coefficient's antiderivative at rho `t`, for the Lagrange polynomial in
    log rho that is 1 at `b` and 0 at `c`: t (log t - log c - 1) / (log b - log c), in float32
    (diffusers' ind_fn, its logs NumPy's float32 ones)."""
    return t * (-np.log(c) + np.log(t) - _F32(1.0)) / (np.log(b) - np.log(c))


def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    """The signal and noise scales (alpha_t, sigma_t) of a noise level sigma, in float32."""
    alpha = _F32(1.0) / np.sqrt(sigma * sigma + _F32(1.0))
    return alpha, sigma * alpha


def _lambda(alpha: np.float32, sigma: np.float32) -> np.float32:
    """The log signal-to-noise ratio log(alpha) - log(sigma), in float32."""
    return _F32(math.log(alpha)) - _F32(math.log(sigma))


def _neg_log(sigma: np.float32) -> np.float32:
    """-log(sigma) in float32, correctly rounded (diffusers' t_fn, in torch's float32)."""
    return _F32(-math.log(float(sigma)))


def _exp_neg(t: np.float32) -> np.float32:
    """exp(-t) in float32, correctly rounded (diffusers' sigma_fn)."""
    return _F32(math.exp(-float(t)))
