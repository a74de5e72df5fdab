"""Samplers by name: each row says which diffusers scheduler runs it and how to configure it.

Every sampler is built from the model's own scheduler config (its beta schedule, training
timesteps and prediction type), so a v-prediction SD2 model gets v-prediction DDIM, and so on;
the row only adds what makes the sampler itself (Karras sigmas, SDE variant, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import BadRequest


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # class name in diffusers
    label: str  # the name A1111 shows, written into PNG metadata
    options: dict = field(default_factory=dict)
    stochastic: bool = False  # draws fresh noise at each step
    aliases: tuple = ()


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("plms", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    Sampler("ddim", "DDIMScheduler", "DDIM", {"set_alpha_to_one": False}),
    Sampler("ddpm", "DDPMScheduler", "DDPM", stochastic=True),
    Sampler("euler", "EulerDiscreteScheduler", "Euler"),
    Sampler("euler_karras", "EulerDiscreteScheduler", "Euler Karras", {"use_karras_sigmas": True}),
    Sampler("euler_a", "EulerAncestralDiscreteScheduler", "Euler a", stochastic=True, aliases=("k_euler_a",)),
    Sampler("heun", "HeunDiscreteScheduler", "Heun", aliases=("k_heun",)),
    Sampler("lms", "LMSDiscreteScheduler", "LMS", aliases=("k_lms",)),
    Sampler("lms_karras", "LMSDiscreteScheduler", "LMS Karras", {"use_karras_sigmas": True}),
    Sampler("dpm2", "KDPM2DiscreteScheduler", "DPM2", aliases=("k_dpm_2",)),
    Sampler("dpm2_a", "KDPM2AncestralDiscreteScheduler", "DPM2 a", stochastic=True, aliases=("k_dpm_2_a",)),
    Sampler("dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M"),
    Sampler("dpmpp_2m_karras", "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}),
    Sampler(
        "dpmpp_2m_sde_karras",
        "DPMSolverMultistepScheduler",
        "DPM++ 2M SDE Karras",
        {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
        stochastic=True,
    ),
    Sampler("dpmpp_sde_karras", "DPMSolverSDEScheduler", "DPM++ SDE Karras", {"use_karras_sigmas": True}, stochastic=True),
    Sampler("dpmpp_2s_karras", "DPMSolverSinglestepScheduler", "DPM++ 2S Karras", {"use_karras_sigmas": True}),
    Sampler("deis", "DEISMultistepScheduler", "DEIS"),
    Sampler("unipc", "UniPCMultistepScheduler", "UniPC"),
    Sampler("lcm", "LCMScheduler", "LCM", stochastic=True),
)

DEFAULT_SAMPLER = "dpmpp_2m_karras"

_BY_NAME = {s.name: s for s in SAMPLERS}
_BY_NAME.update({alias: s for s in SAMPLERS for alias in s.aliases})
_BY_LABEL = {s.label.lower(): s for s in SAMPLERS}


def get_sampler(name: str) -> Sampler:
    """Find a sampler by its reverie name, an alias (k_euler_a) or its A1111 label ("Euler a")."""
    key = name.strip()
    found = _BY_NAME.get(key.lower()) or _BY_LABEL.get(key.lower())
    if found is None:
        names = ", ".join(s.name for s in SAMPLERS)
        raise BadRequest("sampler", f"unknown sampler {name!r}; choose one of: {names}")
    return found


# Config keys that belong to the model's noise schedule and carry over to every sampler.
_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "clip_sample",
    "rescale_betas_zero_snr",
)


def scheduler_options(sampler: Sampler, model_scheduler_config: dict) -> dict:
    """The config `sampler`'s scheduler is built from: the model's noise schedule (its
    _SCHEDULE_KEYS), then what makes the sampler itself (its row's options)."""
    config = {k: model_scheduler_config[k] for k in _SCHEDULE_KEYS if k in model_scheduler_config}
    return config | sampler.options


def build_scheduler(name: str, model_scheduler_config: dict, seeds: list[int] | None = None):
    """Make the diffusers scheduler for sampler `name`, configured for a model's noise schedule.

    `seeds` (one per image) seed the Brownian tree of the DPM++ SDE sampler, whose noise
    would otherwise come from fresh entropy and break reproducibility.
    """
    import diffusers  # here, not at the top: naming and checking a sampler needs no torch

    sampler = get_sampler(name)
    cls = getattr(diffusers, sampler.scheduler)
    scheduler = cls.from_config(scheduler_options(sampler, model_scheduler_config))
    if sampler.scheduler == "DPMSolverSDEScheduler" and seeds:
        scheduler.noise_sampler_seed = list(seeds) if len(seeds) > 1 else seeds[0]
    return scheduler
