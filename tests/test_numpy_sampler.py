"""The torch-free sampling path against the real thing: torch.randn and diffusers' DPM++ 2M (and its SDE),
Euler, Euler a, Heun, DPM2, DPM2 a, LMS, DDIM, DDPM, PLMS, LCM, UniPC, DEIS, DPM++ 2S Karras and DPM++ SDE Karras."""

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reverie import samplers
from reverie.methods.diffusion import numpy_sampler
from reverie.methods.diffusion.inputs import denoising_steps
from reverie.methods.diffusion.numpy_sampler import (DDIM, DDPM, DEIS, DPM2, LCM, LMS, PLMS, DPM2Ancestral,
                                                     DPMSolver2M, DPMSolver2S, DPMSolverSDE, EulerAncestral,
                                                     EulerDiscrete, Heun,
                                                     UniPC, make_sampler, sampler_supported)
from reverie.errors import BadRequest
from reverie.samplers import build_scheduler
from reverie.torch_noise import TorchCPUGenerator, torch_randn

MINI_CONFIG = json.loads(
    (Path(__file__).parents[1] / "src/reverie/builtin/mini/scheduler/scheduler_config.json").read_text())
SD15_CONFIG = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
               "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
               "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False,
               "set_alpha_to_one": False, "skip_prk_steps": True}
SD2_CONFIG = json.loads(  # v-prediction with SD 1.5's schedule and spacing
    (Path(__file__).parents[1] / "src/reverie/models/configs/sd2/scheduler/scheduler_config.json").read_text())
LINEAR_CONFIG = {"beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_spacing": "linspace"}
CONFIGS = {"mini": MINI_CONFIG, "sd15": SD15_CONFIG, "sd2": SD2_CONFIG, "linear": LINEAR_CONFIG}

# torch's AVX2 path (also taken under its AVX512 capability) is matched bit for bit; its DEFAULT
# path (libm's logf/sinf/cosf) within a few float32 ulps.
EXACT_NOISE = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
NOISE_TOLERANCE = 1e-5


def reference_randn(seed: int, shape: tuple) -> np.ndarray:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()


def assert_same_noise(mine: np.ndarray, reference: np.ndarray) -> None:
    assert mine.dtype == np.float32 and mine.shape == reference.shape
    if EXACT_NOISE:
        np.testing.assert_array_equal(mine, reference)
    else:
        np.testing.assert_allclose(mine, reference, rtol=0, atol=NOISE_TOLERANCE)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, 2**40 + 987654321])
@pytest.mark.parametrize("shape", [(4, 16, 16), (1, 4, 8, 8), (7,), (17,), (33,), (16,), (4, 4, 16, 16)])
def test_randn_matches_torch(seed, shape):
    assert_same_noise(torch_randn(seed, shape), reference_randn(seed, shape))


def test_randn_matches_torch_over_many_values():
    assert_same_noise(torch_randn(20240611, (4, 4, 64, 64)), reference_randn(20240611, (4, 4, 64, 64)))


def test_a_wrong_seed_gives_other_noise():
    reference = reference_randn(12345, (4, 16, 16))
    assert np.abs(torch_randn(12346, (4, 16, 16)) - reference).max() > 1.0


def test_seeds_wrap_as_in_torch():
    # torch seeds its mt19937 with the seed's low 32 bits; negative seeds wrap modulo 2**64.
    for seed, same_as in [(2**32 + 5, 5), (2**63 + 11, 11), (-1, 2**32 - 1)]:
        np.testing.assert_array_equal(torch_randn(seed, (33,)), torch_randn(same_as, (33,)))
        assert_same_noise(torch_randn(seed, (33,)), reference_randn(seed, (33,)))
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError):
            torch_randn(seed, (16,))
        with pytest.raises(ValueError):  # torch refuses them too
            torch.Generator("cpu").manual_seed(seed)


def test_consecutive_draws_continue_torchs_stream():
    # Small draws keep a spare normal in the generator, which a later small draw uses.
    shapes = [(7,), (3,), (16,), (5,), (33,), (1,), (1,), (4, 16, 16), (9,), (2,), (), (0,), (2, 3)]
    for seed in (0, 42):
        generator, mine = torch.Generator("cpu").manual_seed(seed), TorchCPUGenerator(seed)
        for shape in shapes:
            reference = torch.randn(shape, generator=generator, dtype=torch.float32).numpy()
            assert_same_noise(mine.randn(shape), reference)


def run_diffusers(config: dict, steps: int, start: np.ndarray) -> np.ndarray:
    scheduler = build_scheduler("dpmpp_2m", config)
    scheduler.set_timesteps(steps)
    sample = torch.from_numpy(start)
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.from_numpy(fake_model(sample.numpy(), int(t))), t, sample).prev_sample
    return sample.numpy()


def run_numpy(config: dict, steps: int, start: np.ndarray) -> np.ndarray:
    sampler = DPMSolver2M(config, steps)
    sample = start * np.float32(sampler.init_noise_sigma)
    for t in sampler.timesteps:
        sample = sampler.step(fake_model(sample, int(t)), sample)
    return sample


def fake_model(sample: np.ndarray, timestep: int) -> np.ndarray:
    return (np.float32(0.5) * np.tanh(sample) + np.float32(0.01 * timestep / 1000)).astype(np.float32)


def relative_difference(mine: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(mine - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 25])
def test_timesteps_and_sigmas_match_diffusers(name, steps):
    scheduler = build_scheduler("dpmpp_2m", CONFIGS[name])
    scheduler.set_timesteps(steps)
    sampler = DPMSolver2M(CONFIGS[name], steps)
    assert sampler.timesteps.dtype == np.int64
    np.testing.assert_array_equal(sampler.timesteps, scheduler.timesteps.numpy())
    # torch's float32 sqrt is not always correctly rounded (NumPy's is): a few sigmas are 1 ulp off.
    np.testing.assert_allclose(sampler.sigmas, scheduler.sigmas.numpy(), rtol=1e-6, atol=0)
    assert sampler.init_noise_sigma == scheduler.init_noise_sigma


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 25])
def test_denoising_matches_diffusers(name, steps):
    start = torch_randn(steps, (2, 4, 16, 16))
    mine = run_numpy(CONFIGS[name], steps, start)
    assert mine.dtype == np.float32
    assert relative_difference(mine, run_diffusers(CONFIGS[name], steps, start)) <= 1e-4


def test_a_wrong_sampler_is_told_apart():
    start = torch_randn(7, (1, 4, 16, 16))
    reference = run_diffusers(MINI_CONFIG, 20, start)
    assert relative_difference(run_numpy(MINI_CONFIG | {"prediction_type": "epsilon"}, 20, start), reference) > 0.1
    assert relative_difference(run_numpy(MINI_CONFIG, 19, start), reference) > 1e-3


def test_stepping_past_the_end_is_an_error():
    sampler = DPMSolver2M(MINI_CONFIG, 2)
    sample = torch_randn(0, (1, 4, 8, 8))
    for _ in sampler.timesteps:
        sample = sampler.step(sample, sample)
    with pytest.raises(RuntimeError):
        sampler.step(sample, sample)


@pytest.mark.parametrize("name", ["dpmpp_2m", "DPM++ 2M"])
def test_the_default_sampler_of_these_configs_is_supported(name):
    for config in CONFIGS.values():
        assert sampler_supported(name, config)


def test_an_unknown_sampler_is_refused():
    assert not sampler_supported("nonsense", MINI_CONFIG)
    with pytest.raises(BadRequest):
        make_sampler("nonsense", MINI_CONFIG, 20)


@pytest.mark.parametrize("change", [
    {"beta_schedule": "squaredcos_cap_v2", "trained_betas": None},
    {"rescale_betas_zero_snr": True},
    {"prediction_type": "sample"},
    {"timestep_spacing": "sideways"},
])
def test_unported_schedules_are_refused(change):
    config = MINI_CONFIG | change
    assert not sampler_supported("dpmpp_2m", config)
    with pytest.raises(ValueError):
        DPMSolver2M(config, 20)


def test_unported_sampler_options_are_refused(monkeypatch):
    dpmpp_2m = samplers.get_sampler("dpmpp_2m")
    for options in ({"use_exponential_sigmas": True}, {"algorithm_type": "sde-dpmsolver"}, {"thresholding": True},
                    {"solver_order": 3}, {"final_sigmas_type": "sigma_min"}, {"euler_at_final": True}):
        monkeypatch.setitem(samplers._BY_NAME, "dpmpp_2m", dataclasses.replace(dpmpp_2m, options=options))
        assert not sampler_supported("dpmpp_2m", MINI_CONFIG)
        with pytest.raises(ValueError):
            DPMSolver2M(MINI_CONFIG, 20)


def test_options_build_scheduler_drops_are_ignored_as_it_does():
    config = MINI_CONFIG | {"use_karras_sigmas": True, "solver_order": 3}
    assert not build_scheduler("dpmpp_2m", config).config.use_karras_sigmas
    assert sampler_supported("dpmpp_2m", config)



ONLY_WITH_A_FIXED_OPTION = {"dynamic_thresholding_ratio", "sample_max_value", "flow_shift", "time_shift_type"}


@pytest.mark.parametrize("scheduler", sorted(numpy_sampler._SCHEDULERS))
def test_every_option_of_each_ported_diffusers_scheduler_is_accounted_for(scheduler):
    """Each option of a diffusers scheduler that a port mirrors is ported, with diffusers' default,
    or held at the one value the port runs: diffusers' default, or what reverie's sampler rows
    set (PLMS: its PRK steps skipped). Those left out matter only once a held option changes."""
    import diffusers

    fixed, ported = numpy_sampler._OPTION_TABLES[numpy_sampler._SCHEDULERS[scheduler]]
    defaults = {name: p.default for name, p in inspect.signature(getattr(diffusers, scheduler)).parameters.items()}
    assert set(fixed) | set(ported) <= set(defaults)
    assert set(defaults) - set(fixed) - set(ported) <= ONLY_WITH_A_FIXED_OPTION
    rows = {key: value for row in samplers.SAMPLERS if row.scheduler == scheduler for key, value in row.options.items()}
    for name, default in ported.items():
        assert default == defaults[name], name
    for name, value in fixed.items():
        assert value == rows.get(name, defaults[name]), name


@pytest.mark.parametrize("steps", [0, 1000])
def test_steps_out_of_range_are_refused(steps):
    with pytest.raises(ValueError):
        DPMSolver2M(MINI_CONFIG, steps)


def test_importing_the_torch_free_path_imports_no_torch():
    code = ("import sys, reverie.torch_noise, reverie.methods.diffusion.numpy_sampler; "
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"




# make_sampler: DPM++ 2M and Euler, each with and without Karras sigmas, DPM++ 2M SDE Karras,
# Euler a, Heun, DPM2, DPM2 a, LMS with and without, DDIM (at eta 0 here; above it further down), DDPM,
# PLMS, LCM, UniPC, DEIS and DPM++ 2S Karras, against build_scheduler's.

SAMPLER_NAMES = ["dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "euler", "euler_karras", "euler_a", "ddim", "lcm",
                 "unipc", "heun", "plms", "lms", "lms_karras", "dpm2", "dpm2_a", "ddpm", "deis", "dpmpp_2s_karras"]
STEP_COUNTS = [1, 4, 14, 15, 20, 25]  # 14 and 15: either side of diffusers' "fewer than 15 steps" rule
SAMPLE_SHAPE = (2, 4, 8, 8)
TOLERANCE = 1e-5  # relative to the largest value; the port is within about 1e-6 (DEIS and DPM2 a: 6e-6)


def reference_scheduler(name: str, config: dict, steps: int):
    scheduler = build_scheduler(name, config)
    scheduler.set_timesteps(steps)
    return scheduler


def assert_close(mine: np.ndarray, reference) -> None:
    reference = reference.numpy() if isinstance(reference, torch.Tensor) else reference
    assert mine.dtype == np.float32 and mine.shape == reference.shape
    assert relative_difference(mine, reference) <= TOLERANCE


def step_both(sampler, reference, mine: np.ndarray, theirs: torch.Tensor, begin: int, rng, seeds=(5, 6)) -> None:
    """Both samplers from timestep `begin` to the end, fed the same random 'model outputs': the
    UNet's input and each step's sample alike. The stochastic ones draw each step's fresh noise
    from one generator per picture (`seeds`), as the pipelines give diffusers: torch's, and ours
    drawn as torch draws it."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    ours = [TorchCPUGenerator(seed) for seed in seeds]
    for index, t in enumerate(reference.timesteps[begin:]):
        assert sampler.step_index == begin + index
        assert_close(sampler.scale_model_input(mine), reference.scale_model_input(theirs, t))
        output = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
        noise = np.stack([g.randn(SAMPLE_SHAPE[1:]) for g in ours]) if sampler.wants_noise else None
        mine = sampler.step(output, mine, noise)
        drawing = {"generator": generators} if "generator" in inspect.signature(reference.step).parameters else {}
        theirs = reference.step(torch.from_numpy(output), t, theirs, **drawing).prev_sample  # UniPC's takes none
        assert_close(mine, theirs)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_schedule_matches_diffusers(name, config_name, steps):
    reference = reference_scheduler(name, CONFIGS[config_name], steps)
    sampler = make_sampler(name, CONFIGS[config_name], steps)
    expected = reference.timesteps.numpy()
    assert sampler.timesteps.dtype == expected.dtype == (np.float32 if name.startswith(("euler", "heun", "lms", "dpm2")) else np.int64)
    if name in ("euler_karras", "lms_karras", "dpm2", "dpm2_a"):
        # Fractional timesteps (DPM2's midpoints') from the log training sigmas, of which torch's sqrt rounds a few
        # otherwise: a float32 ulp or two apart. DPM2 a's midpoints lie toward each step's sigma_down, which its
        # difference of squares (sigma_to**2 - sigma_up**2) takes from those last bits magnified up to a thousand
        # times where it is small: timesteps up to 1e-3 apart (measured 6e-4), each sigma still within 1e-6.
        np.testing.assert_allclose(sampler.timesteps, expected, rtol=1e-6, atol=1e-3 if name == "dpm2_a" else 0)
    else:
        np.testing.assert_array_equal(sampler.timesteps, expected)
    if name in ("ddim", "lcm", "plms", "ddpm"):  # no sigmas: the cumulative alphas, and the one past the end
        np.testing.assert_array_equal(sampler.alphas_cumprod, reference.alphas_cumprod.numpy())
        final = reference.one if name == "ddpm" else reference.final_alpha_cumprod  # DDPM's: 1
        assert sampler.final_alpha == final.numpy()
    else:
        np.testing.assert_allclose(sampler.sigmas, reference.sigmas.numpy(), rtol=1e-6, atol=0)
    assert isinstance(sampler.init_noise_sigma, float)
    assert sampler.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_sampling_matches_diffusers(name, config_name, steps):
    """A whole run, fed the same random 'model outputs', as a pipeline runs it: the starting noise
    scaled by init_noise_sigma, then per timestep the UNet's input and the step."""
    reference = reference_scheduler(name, CONFIGS[config_name], steps)
    sampler = make_sampler(name, CONFIGS[config_name], steps)
    rng = np.random.default_rng(1000 * steps + len(config_name))
    start = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
    mine = start * np.float32(sampler.init_noise_sigma)
    theirs = torch.from_numpy(start) * reference.init_noise_sigma
    assert_close(mine, theirs)
    step_both(sampler, reference, mine, theirs, 0, rng)
    assert sampler.step_index == len(reference.timesteps)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.75, 1.0])
def test_img2img_matches_diffusers(name, config_name, strength):
    """From a picture's latents, as diffusers' img2img pipeline runs its scheduler: the steps
    `strength` leaves (get_timesteps, set_begin_index), the latents noised to the first of them
    (add_noise), then the steps."""
    steps = denoising_steps(20, strength)
    reference = reference_scheduler(name, CONFIGS[config_name], steps)
    begin = steps - min(int(steps * strength), steps)
    begin *= reference.order  # as get_timesteps: a two-pass sampler (Heun) enters twice as far in
    if hasattr(reference, "set_begin_index"):  # as the pipeline: DDIM has none, and goes by the timesteps it is given
        reference.set_begin_index(begin)
    sampler = make_sampler(name, CONFIGS[config_name], steps)
    assert sampler.order == reference.order
    sampler.begin_at(begin)
    rng = np.random.default_rng(int(strength * 100) + len(config_name))
    original, noise = (rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32) for _ in range(2))
    first = reference.timesteps[begin:begin + 1]
    theirs = reference.add_noise(torch.from_numpy(original), torch.from_numpy(noise), first.repeat(2))
    mine = sampler.add_noise(original, noise)
    assert_close(mine, theirs)
    assert not np.allclose(mine, original)  # noised
    step_both(sampler, reference, mine, theirs, begin, rng)
    assert sampler.step_index == len(reference.timesteps)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_ddim_with_eta_matches_diffusers(eta, config_name, steps):
    """DDIM with eta above 0 adds fresh noise at each step, from each picture's generator."""
    reference = reference_scheduler("ddim", CONFIGS[config_name], steps)
    sampler = make_sampler("ddim", CONFIGS[config_name], steps, eta=eta)
    assert sampler.stochastic and not make_sampler("ddim", CONFIGS[config_name], steps).stochastic
    rng = np.random.default_rng(steps)
    mine = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
    theirs = torch.from_numpy(mine.copy())
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in (5, 6)]
    ours = [TorchCPUGenerator(seed) for seed in (5, 6)]
    for t in reference.timesteps:
        output = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
        mine = sampler.step(output, mine, np.stack([g.randn(SAMPLE_SHAPE[1:]) for g in ours]))
        theirs = reference.step(torch.from_numpy(output), t, theirs, eta=eta, generator=generators).prev_sample
        assert_close(mine, theirs)
    quiet = make_sampler("ddim", CONFIGS[config_name], steps)
    start = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
    noisy = make_sampler("ddim", CONFIGS[config_name], steps, eta=eta)
    assert relative_difference(noisy.step(start, start, start), quiet.step(start, start)) > 1e-3 or steps == 1


def test_lcm_draws_noise_for_every_step_but_the_last():
    """LCM noises its data prediction again for the next step with fresh noise, which diffusers
    draws for every step but the last (one-step sampling draws none): the last lands on the data
    prediction whatever the noise; the others refuse to go on without it."""
    sampler = make_sampler("lcm", SD15_CONFIG, 3)
    assert sampler.stochastic
    sample = torch_randn(0, (1, 4, 8, 8))
    output = np.tanh(sample)
    assert [sampler.wants_noise] == [True]
    with pytest.raises(ValueError, match="noise"):
        sampler.step(output, sample)
    ends = [make_sampler("lcm", SD15_CONFIG, 3).step(output, sample, torch_randn(seed, (1, 4, 8, 8))) for seed in (1, 2)]
    assert relative_difference(ends[0], ends[1]) > 0.05
    for _ in range(2):
        sampler.step(output, sample, torch_randn(1, (1, 4, 8, 8)))
    assert not sampler.wants_noise
    one = make_sampler("lcm", SD15_CONFIG, 1)
    assert not one.wants_noise
    np.testing.assert_array_equal(one.step(output, sample), make_sampler("lcm", SD15_CONFIG, 1).step(output, sample))


def test_lcm_takes_at_most_the_steps_it_was_distilled_on():
    make_sampler("lcm", SD15_CONFIG, 50)
    with pytest.raises(ValueError, match="distilled on 50 steps"):
        make_sampler("lcm", SD15_CONFIG, 51)




def test_unipcs_corrector_changes_the_sample():
    """UniPC's corrector mends each step's sample with the model's output at it: the same
    outputs fed to UniPC and to its predictor alone (the corrector disabled in diffusers) part."""
    plain = reference_scheduler("unipc", SD15_CONFIG, 5)
    bare = build_scheduler("unipc", SD15_CONFIG)
    bare.register_to_config(disable_corrector=list(range(5)))
    bare.disable_corrector = list(range(5))
    bare.set_timesteps(5)
    mine = make_sampler("unipc", SD15_CONFIG, 5)
    rng = np.random.default_rng(2)
    sample = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
    ours, theirs, uncorrected = sample, torch.from_numpy(sample), torch.from_numpy(sample)
    for t in plain.timesteps:
        output = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32)
        ours = mine.step(output, ours)
        theirs = plain.step(torch.from_numpy(output), t, theirs).prev_sample
        uncorrected = bare.step(torch.from_numpy(output), t, uncorrected).prev_sample
    assert_close(ours, theirs)
    assert relative_difference(ours, uncorrected.numpy()) > 100 * TOLERANCE






def test_dpm2_evaluates_the_model_at_each_steps_midpoint():
    sampler = make_sampler("dpm2", SD15_CONFIG, 5)
    assert sampler.order == 2 and len(sampler.timesteps) == 9
    # each second pass at the geometric mean of its step's sigmas
    np.testing.assert_allclose(sampler.middles[0], np.sqrt(sampler.sigmas[0] * sampler.sigmas[2]), rtol=1e-6)


def test_dpm2_a_draws_noise_in_each_steps_second_pass():
    """DPM2 a adds fresh noise where a step's second pass lands (its sigma_down, below the next
    sigma), which diffusers draws in that pass alone: none in first passes, none for the last
    step (one pass, landing on sigma 0), so 5 steps draw 4 times over their 9 evaluations."""
    sampler = make_sampler("dpm2_a", SD15_CONFIG, 5)
    assert sampler.stochastic and sampler.order == 2 and len(sampler.timesteps) == 9
    sample = torch_randn(0, (1, 4, 8, 8)) * np.float32(sampler.init_noise_sigma)
    asked = []
    for _ in sampler.timesteps:
        asked.append(sampler.wants_noise)
        if sampler.wants_noise:
            with pytest.raises(ValueError, match="noise"):
                sampler.step(np.tanh(sample), sample)
        sample = sampler.step(np.tanh(sample), sample, torch_randn(len(asked), (1, 4, 8, 8)) if asked[-1] else None)
    assert asked == [False, True] * 4 + [False]
    ups, downs, sigmas = sampler.ups, sampler.ends, sampler.sigmas[::2]  # per step, then 0
    np.testing.assert_allclose(downs**2 + ups**2, sigmas[1:] ** 2, rtol=1e-5)
    assert (downs[:-1] < sigmas[1:-1]).all() and downs[-1] == ups[-1] == sampler.middles[-1] == 0
    np.testing.assert_allclose(sampler.middles[:-1], np.sqrt(sigmas[:-2] * downs[:-1]), rtol=1e-6)
    second = [make_sampler("dpm2_a", SD15_CONFIG, 5) for _ in range(2)]
    ends = []
    for seed, dpm2_a in zip((1, 2), second):
        start = dpm2_a.step(np.tanh(sample), sample)
        ends.append(dpm2_a.step(np.tanh(start), start, torch_randn(seed, (1, 4, 8, 8))))
    assert relative_difference(ends[0], ends[1]) > 0.05


def test_ddpm_draws_noise_where_the_timestep_is_above_0():
    """DDPM adds its posterior's spread times fresh noise at each step, which diffusers draws
    where the timestep is above 0: a schedule ending on timestep 0 ("linspace") draws none for its
    last step, which lands on the data prediction; one ending above it (SD's leading spacing
    with its offset of 1) draws for every step."""
    for config, last_draws in ((SD15_CONFIG, True), (LINEAR_CONFIG, False)):
        sampler = make_sampler("ddpm", config, 4)
        assert sampler.stochastic
        sample = torch_randn(0, (1, 4, 8, 8))
        with pytest.raises(ValueError, match="noise"):
            make_sampler("ddpm", config, 4).step(np.tanh(sample), sample)
        asked = []
        for _ in sampler.timesteps:
            asked.append(sampler.wants_noise)
            sample = sampler.step(np.tanh(sample), sample, torch_randn(len(asked), (1, 4, 8, 8)) if asked[-1] else None)
        assert asked == [True, True, True, last_draws] and not sampler.wants_noise
    ends = [make_sampler("ddpm", SD15_CONFIG, 4).step(np.tanh(sample), sample, torch_randn(seed, (1, 4, 8, 8)))
            for seed in (1, 2)]
    assert relative_difference(ends[0], ends[1]) > 0.05


def test_deis_ends_on_the_first_training_sigma():
    """DEIS runs DPM++ 2M's timesteps and sigmas but for the last, the first training sigma's, not 0."""
    deis, dpm = make_sampler("deis", SD15_CONFIG, 20), make_sampler("dpmpp_2m", SD15_CONFIG, 20)
    np.testing.assert_array_equal(deis.timesteps, dpm.timesteps)
    np.testing.assert_array_equal(deis.sigmas[:-1], dpm.sigmas[:-1])
    assert dpm.sigmas[-1] == 0 and deis.sigmas[-1] == pytest.approx((0.00085 / (1 - 0.00085)) ** 0.5, rel=1e-4)


def test_dpmpp_2s_steps_in_pairs_over_dpmpp_2m_karras_schedule():
    """DPM++ 2S Karras runs DPM++ 2M Karras's schedule, its steps in (first order, second order)
    pairs and first order at the end: one step alone with an odd count, two with an even one."""
    for config in CONFIGS.values():
        two_s, two_m = make_sampler("dpmpp_2s_karras", config, 20), make_sampler("dpmpp_2m_karras", config, 20)
        np.testing.assert_array_equal(two_s.timesteps, two_m.timesteps)
        np.testing.assert_array_equal(two_s.sigmas, two_m.sigmas)
    assert make_sampler("dpmpp_2s_karras", SD15_CONFIG, 5).orders == [1, 2, 1, 2, 1]
    assert make_sampler("dpmpp_2s_karras", SD15_CONFIG, 6).orders == [1, 2, 1, 2, 1, 1]
    assert make_sampler("dpmpp_2s_karras", SD15_CONFIG, 1).orders == [1]
    for steps in STEP_COUNTS:
        assert reference_scheduler("dpmpp_2s_karras", SD15_CONFIG, steps).order_list == \
            make_sampler("dpmpp_2s_karras", SD15_CONFIG, steps).orders


def test_plms_evaluates_the_model_twice_for_its_first_step():
    sampler = make_sampler("plms", SD15_CONFIG, 5)
    assert len(sampler.timesteps) == 6 and sampler.timesteps[1] == sampler.timesteps[2] != sampler.timesteps[0]


def test_heun_evaluates_the_model_twice_a_step_but_the_last():
    sampler = make_sampler("heun", SD15_CONFIG, 5)
    assert sampler.order == 2 and len(sampler.timesteps) == 9 and len(sampler.sigmas) == 10
    assert sampler.sigmas[-1] == 0 and sampler.sigmas[1] == sampler.sigmas[2] and sampler.timesteps[1] == sampler.timesteps[2]


def test_ddim_refuses_an_eta_outside_0_to_1():
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", SD15_CONFIG, 20, eta=1.5)


def test_begin_at_comes_first_and_inside_the_schedule():
    sampler = make_sampler("dpmpp_2m", SD15_CONFIG, 4)
    with pytest.raises(ValueError, match="not one of the 4"):
        sampler.begin_at(4)
    sampler.step(np.zeros(SAMPLE_SHAPE, np.float32), np.ones(SAMPLE_SHAPE, np.float32))
    with pytest.raises(RuntimeError, match="before the first step"):
        sampler.begin_at(1)


def test_the_samplers_are_told_apart():
    """The tolerance above tells each sampler from the others and from a step count off by one."""
    def final(name, steps):
        sampler = make_sampler(name, SD15_CONFIG, steps)
        rng, fresh = np.random.default_rng(0), TorchCPUGenerator(3)
        sample = rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32) * np.float32(sampler.init_noise_sigma)
        for _ in sampler.timesteps:
            noise = fresh.randn(SAMPLE_SHAPE) if sampler.wants_noise else None
            sample = sampler.step(np.tanh(sampler.scale_model_input(sample)) + rng.standard_normal(
                SAMPLE_SHAPE, dtype=np.float32) * np.float32(0.1), sample, noise)
        return sample

    results = {name: final(name, 20) for name in SAMPLER_NAMES}
    # DDPM's ancestral step is Euler a's in DDPM's variables (its posterior's spread is alpha x sigma_up): over
    # the same timesteps (SD 1.5's leading spacing gives both DDIM's) they are one sampler, in diffusers too.
    assert relative_difference(results["ddpm"], results["euler_a"]) < TOLERANCE
    for name in SAMPLER_NAMES:
        assert relative_difference(final(name, 19), results[name]) > 100 * TOLERANCE
        for other in SAMPLER_NAMES:
            if other != name and {name, other} != {"ddpm", "euler_a"}:
                assert relative_difference(results[other], results[name]) > 100 * TOLERANCE


def test_the_karras_schedules_differ_as_in_diffusers():
    # DPM++ 2M Karras spans the whole training schedule and rounds its timesteps, so the model's
    # timestep spacing does not change it; Euler Karras spans its spaced timesteps' sigmas.
    trailing = SD15_CONFIG | {"timestep_spacing": "trailing"}
    np.testing.assert_array_equal(make_sampler("dpmpp_2m_karras", trailing, 20).timesteps,
                                  make_sampler("dpmpp_2m_karras", SD15_CONFIG, 20).timesteps)
    assert make_sampler("dpmpp_2m_karras", SD15_CONFIG, 20).timesteps[0] == 999
    leading = make_sampler("euler_karras", SD15_CONFIG, 20)
    assert leading.timesteps[0] == 951 and leading.init_noise_sigma > leading.sigmas[0]  # leading: sqrt(max^2 + 1)
    assert make_sampler("euler_karras", trailing, 20).timesteps[0] == 999
    for config in (trailing, SD15_CONFIG):
        reference = reference_scheduler("euler_karras", config, 20)
        np.testing.assert_allclose(make_sampler("euler_karras", config, 20).timesteps, reference.timesteps.numpy(),
                                   rtol=1e-6, atol=0)


def test_a_repeated_first_timestep_is_refused():
    # reverie-mini's last training betas grow fast, so from 340 steps its Karras schedule rounds
    # its first two timesteps both to 999: diffusers then starts at the second and steps past its end.
    reference = reference_scheduler("dpmpp_2m_karras", MINI_CONFIG, 340)
    assert reference.timesteps[0] == reference.timesteps[1]
    with pytest.raises(IndexError):
        sample = torch.zeros(1, 1, 2, 2)
        for t in reference.timesteps:
            sample = reference.step(sample, t, sample).prev_sample
    make_sampler("dpmpp_2m_karras", MINI_CONFIG, 339)
    with pytest.raises(ValueError):
        make_sampler("dpmpp_2m_karras", MINI_CONFIG, 340)


@pytest.mark.parametrize("name", ["dpmpp_2m_karras", "DPM++ 2M Karras", "euler", "Euler", "euler_karras", "Euler Karras",
                                  "euler_a", "Euler a", "k_euler_a", "dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras",
                                  "ddim", "DDIM", "lcm", "LCM", "unipc", "UniPC", "heun", "Heun", "k_heun",
                                  "plms", "PLMS", "lms", "LMS", "k_lms", "lms_karras", "LMS Karras",
                                  "dpm2", "DPM2", "k_dpm_2", "dpm2_a", "DPM2 a", "k_dpm_2_a", "ddpm", "DDPM",
                                  "deis", "DEIS", "dpmpp_2s_karras", "DPM++ 2S Karras", "dpmpp_sde_karras",
                                  "DPM++ SDE Karras"])
def test_the_ported_samplers_are_supported(name):
    for config in CONFIGS.values():
        assert sampler_supported(name, config)
        make_sampler(name, config, 20)


def test_make_sampler_gives_each_scheduler_its_port():
    ports = {"DPM++ 2M": DPMSolver2M, "dpmpp_2m_karras": DPMSolver2M, "Euler Karras": EulerDiscrete,
             "Euler a": EulerAncestral, "DPM++ 2M SDE Karras": DPMSolver2M, "DDIM": DDIM, "LCM": LCM, "UniPC": UniPC,
             "Heun": Heun, "PLMS": PLMS, "LMS Karras": LMS, "DPM2": DPM2, "DPM2 a": DPM2Ancestral,
             "DDPM": DDPM, "DEIS": DEIS, "DPM++ 2S Karras": DPMSolver2S, "DPM++ SDE Karras": DPMSolverSDE}
    for name, port in ports.items():
        assert type(make_sampler(name, MINI_CONFIG, 20)) is port, name
    np.testing.assert_array_equal(DPMSolver2M(MINI_CONFIG, 20).timesteps, make_sampler("dpmpp_2m", MINI_CONFIG, 20).timesteps)
    with pytest.raises(ValueError):
        DPMSolver2M(MINI_CONFIG, 20, sampler="euler")
    with pytest.raises(ValueError):
        EulerDiscrete(MINI_CONFIG, 20, sampler="dpmpp_2m_karras")


def test_dpm_leaves_the_model_input_as_it_is():
    sample = torch_randn(3, (1, 4, 8, 8))
    np.testing.assert_array_equal(DPMSolver2M(MINI_CONFIG, 20).scale_model_input(sample), sample)


@pytest.mark.parametrize("name", ["euler", "euler_karras", "dpmpp_2m_karras", "euler_a", "dpmpp_2m_sde_karras", "lcm",
                                  "unipc", "heun", "plms", "lms", "lms_karras", "dpm2", "dpm2_a", "ddpm", "deis",
                                  "dpmpp_2s_karras"])
def test_stepping_past_the_end_is_an_error_for_every_sampler(name):
    sampler = make_sampler(name, SD15_CONFIG, 2)
    sample = torch_randn(0, (1, 4, 8, 8))
    for _ in sampler.timesteps:
        sample = sampler.step(sampler.scale_model_input(sample), sample, torch_randn(1, (1, 4, 8, 8)))
    with pytest.raises(RuntimeError):
        sampler.scale_model_input(sample)
    with pytest.raises(RuntimeError):
        sampler.step(sample, sample, sample)


@pytest.mark.parametrize("name", ["euler_a", "dpmpp_2m_sde_karras"])
def test_the_stochastic_samplers_take_each_steps_noise(name):
    """Without its fresh noise, or with noise of another shape, a step is refused; with another
    picture's noise it lands elsewhere, and the last step lands on the data prediction whatever the noise."""
    sampler = make_sampler(name, SD15_CONFIG, 3)
    assert sampler.stochastic
    assert not make_sampler(name.replace("_sde", "").replace("_a", ""), SD15_CONFIG, 3).stochastic
    sample = torch_randn(0, (1, 4, 8, 8)) * np.float32(sampler.init_noise_sigma)
    with pytest.raises(ValueError, match="noise"):
        sampler.step(sample, sample)
    with pytest.raises(ValueError, match="noise"):
        sampler.step(sample, sample, torch_randn(1, (1, 4, 8, 4)))
    output = np.tanh(sample)
    ends = []
    for seed in (1, 2):
        sampler = make_sampler(name, SD15_CONFIG, 3)
        ends.append(sampler.step(output, sample, torch_randn(seed, (1, 4, 8, 8))))
    assert relative_difference(ends[0], ends[1]) > 0.05
    landed = [make_sampler(name, SD15_CONFIG, 1).step(output, sample, torch_randn(seed, (1, 4, 8, 8))) for seed in (1, 2)]
    np.testing.assert_array_equal(landed[0], landed[1])


@pytest.mark.parametrize("name", ["euler", "euler_karras", "dpmpp_2m_karras"])
@pytest.mark.parametrize("change", [
    {"beta_schedule": "squaredcos_cap_v2", "trained_betas": None},
    {"rescale_betas_zero_snr": True},
    {"prediction_type": "sample"},
    {"timestep_spacing": "sideways"},
])
def test_unported_schedules_are_refused_by_every_sampler(name, change):
    config = MINI_CONFIG | change
    assert not sampler_supported(name, config)
    with pytest.raises(ValueError):
        make_sampler(name, config, 20)


def test_unported_euler_options_are_refused(monkeypatch):
    euler = samplers.get_sampler("euler")
    for options in ({"use_exponential_sigmas": True}, {"use_beta_sigmas": True}, {"interpolation_type": "log_linear"},
                    {"timestep_type": "continuous"}, {"final_sigmas_type": "sigma_min"}, {"sigma_max": 10.0}):
        monkeypatch.setitem(samplers._BY_NAME, "euler", dataclasses.replace(euler, options=options))
        assert not sampler_supported("euler", MINI_CONFIG)
        with pytest.raises(ValueError):
            make_sampler("euler", MINI_CONFIG, 20)



@pytest.mark.parametrize("name", ["euler", "euler_karras", "dpmpp_2m_karras"])
@pytest.mark.parametrize("steps", [0, 1000])
def test_steps_out_of_range_are_refused_by_every_sampler(name, steps):
    with pytest.raises(ValueError):
        make_sampler(name, MINI_CONFIG, steps)


# DPM++ SDE Karras: its noise from each picture's Brownian tree (tests/test_brownian_tree.py holds
# the tree to torchsde's), asked about at times diffusers takes from torch's float32 log and exp.

SDE_STEP_COUNTS = [1, 4, 15, 25]


def tree_queries(monkeypatch) -> tuple[list, list]:
    """Lists that fill with the times, rounded as both trees round them, that ours and torchsde's are asked about."""
    import torchsde

    from reverie.methods.diffusion import brownian_tree

    ours, theirs = [], []
    for cls, record in ((brownian_tree.BrownianTree, ours), (torchsde.BrownianInterval, theirs)):
        def recorded(self, a, b, *rest, _call=cls.__call__, _record=record, **kw):
            _record.append((round(float(a), 6), round(float(b), 6)))
            return _call(self, a, b, *rest, **kw)
        monkeypatch.setattr(cls, "__call__", recorded)
    return ours, theirs


def sde_both(config: dict, steps: int, seeds: tuple, begin: int = 0) -> tuple:
    reference = build_scheduler("dpmpp_sde_karras", config, list(seeds))
    reference.set_timesteps(steps)
    sampler = make_sampler("dpmpp_sde_karras", config, steps, seeds=list(seeds))
    return sampler, reference


def sde_run(sampler, reference, mine: np.ndarray, theirs: torch.Tensor, begin: int, rng) -> float:
    """Both from timestep `begin` to the end on the same random 'model outputs'; the largest
    difference of the UNet's inputs and samples on the way, relative to the largest value."""
    worst = 0.0
    for index, t in enumerate(reference.timesteps[begin:]):
        assert sampler.step_index == begin + index and not sampler.wants_noise
        worst = max(worst, relative_difference(sampler.scale_model_input(mine), reference.scale_model_input(theirs, t).numpy()))
        output = rng.standard_normal(mine.shape, dtype=np.float32)
        mine = sampler.step(output, mine)
        theirs = reference.step(torch.from_numpy(output), t, theirs).prev_sample
        assert mine.dtype == np.float32
        worst = max(worst, relative_difference(mine, theirs.numpy()))
    assert sampler.step_index == len(reference.timesteps)
    return worst


@pytest.mark.parametrize("config_name", CONFIGS)
def test_dpmpp_sde_karras_is_diffusers_but_where_a_time_rounds_otherwise(config_name, monkeypatch):
    """Timesteps (two passes a step but the last), sigmas and starting noise as diffusers'; a
    whole run on the same model outputs is diffusers' to 1e-5 wherever the tree is asked about
    the same (6-decimal) times, and within 2e-3 where one of diffusers' torch-float32 times
    rounds to another decimal than this port's correctly rounded one (a few step counts in
    three; measured up to 1.1e-3). One tree a picture for two seeds, one of the batch for one."""
    ours, theirs = tree_queries(monkeypatch)
    same_times = 0
    for steps in SDE_STEP_COUNTS:
        for seeds in ((5, 6), (7,)):
            sampler, reference = sde_both(CONFIGS[config_name], steps, seeds)
            assert sampler.order == reference.order == 2 and len(sampler.timesteps) == 2 * steps - 1
            np.testing.assert_allclose(sampler.timesteps, reference.timesteps.numpy(), rtol=1e-6, atol=0)
            np.testing.assert_allclose(sampler.sigmas, reference.sigmas.numpy(), rtol=1e-6, atol=0)
            assert sampler.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)
            rng = np.random.default_rng(steps + len(seeds))
            start = rng.standard_normal((len(seeds), 4, 8, 8), dtype=np.float32)
            del ours[:], theirs[:]
            worst = sde_run(sampler, reference, start * np.float32(sampler.init_noise_sigma),
                            torch.from_numpy(start) * reference.init_noise_sigma, 0, rng)
            assert len(ours) == len(theirs) == len(seeds) * (2 * steps - 2)
            if ours == theirs:
                same_times += 1
                assert worst <= 1e-5, (steps, seeds, worst)
            else:
                assert worst <= 2e-3, (steps, seeds, worst)
    assert same_times >= 3  # a run of one step asks nothing of the trees: at least one more


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_dpmpp_sde_karras_img2img_follows_diffusers(strength):
    """An image mode enters at twice its step (two passes a step), noised as diffusers' add_noise."""
    steps = denoising_steps(20, strength)
    sampler, reference = sde_both(SD15_CONFIG, steps, (5, 6))
    begin = reference.order * (steps - min(int(steps * strength), steps))
    reference.set_begin_index(begin)
    sampler.begin_at(begin)
    rng = np.random.default_rng(3)
    original, noise = (rng.standard_normal(SAMPLE_SHAPE, dtype=np.float32) for _ in range(2))
    theirs = reference.add_noise(torch.from_numpy(original), torch.from_numpy(noise), reference.timesteps[begin:begin + 1])
    mine = sampler.add_noise(original, noise)
    assert relative_difference(mine, theirs.numpy()) <= TOLERANCE
    assert sde_run(sampler, reference, mine, theirs, begin, rng) <= 2e-3


def test_dpmpp_sde_karras_noise_is_each_seeds_own():
    """The same seeds give the same run; another seed another picture's noise; a picture's own
    tree gives it the noise it has alone in a batch of two. Without seeds, no step."""
    def run(seeds, pictures):
        sampler = make_sampler("dpmpp_sde_karras", SD15_CONFIG, 4, seeds=seeds)
        sample = torch_randn(1, (pictures, 4, 8, 8)) * np.float32(sampler.init_noise_sigma)
        for _ in sampler.timesteps:
            sample = sampler.step(np.tanh(sampler.scale_model_input(sample)), sample)
        return sample

    pair = run([5, 6], 2)
    np.testing.assert_array_equal(pair, run([5, 6], 2))
    assert relative_difference(pair[1], run([5, 7], 2)[1]) > 0.05
    np.testing.assert_allclose(pair[:1], run([5], 1), atol=1e-6)
    sampler = make_sampler("dpmpp_sde_karras", SD15_CONFIG, 4)
    sample = torch_randn(1, (1, 4, 8, 8))
    with pytest.raises(ValueError, match="seeds"):
        sampler.step(sample, sample)
    with pytest.raises(ValueError, match="seeds"):
        make_sampler("dpmpp_sde_karras", SD15_CONFIG, 4, seeds=[1, 2, 3]).step(sample, sample)
