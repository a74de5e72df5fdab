"""The diffusion engine end to end, on the tiny random model: seeds, samplers and modes."""

import numpy as np
import pytest
from PIL import Image

from conftest import pixels
from reverie.errors import BadRequest, ImageInputError, ModelNotFound, OutOfMemory, PromptSyntaxError
from reverie.studio import make_request
from reverie.samplers import SAMPLERS, get_sampler

FAST = dict(model="tiny-random", steps=3, cfg_scale=5.0, width=64, height=64)


def generate(studio, **fields):
    return studio.generate(make_request(**(FAST | fields)))


def test_same_seed_same_pixels_and_different_seeds_differ(studio):
    first = generate(studio, prompt="a red apple", seed=1234, n_samples=2)
    again = generate(studio, prompt="a red apple", seed=1234, n_samples=2)
    assert first.seeds == [1234, 1235]
    for a, b in zip(first.images, again.images):
        assert np.array_equal(pixels(a.image), pixels(b.image))
    # the two pictures of one batch had different seeds, so they differ
    assert not np.array_equal(pixels(first.images[0].image), pixels(first.images[1].image))


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "dpmpp_sde_karras"])
def test_batch_size_does_not_change_a_seeds_picture(studio, sampler):
    alone = generate(studio, prompt="a house", seed=50, n_samples=1, sampler=sampler)
    in_batch = generate(studio, prompt="a house", seed=48, n_samples=3, sampler=sampler)
    assert in_batch.seeds[2] == 50
    # Batched matrix products may round differently in the last bit; allow one level of 255.
    diff = np.abs(pixels(alone.images[0].image) - pixels(in_batch.images[2].image))
    assert diff.max() <= 1
    other = np.abs(pixels(alone.images[0].image) - pixels(in_batch.images[0].image))
    assert other.mean() > 1  # and it is not just that every seed looks the same


def test_n_iter_continues_the_seeds(studio):
    result = generate(studio, prompt="a boat", seed=10, n_samples=2, n_iter=2)
    assert result.seeds == [10, 11, 12, 13]
    assert [img.index for img in result.images] == [0, 1, 2, 3]


# What each name must run, written out independently of samplers.py: (diffusers class, what sets it apart).
EXPECTED_SCHEDULERS = {
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": False}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm2": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": False}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2s_karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def test_each_sampler_name_runs_its_own_scheduler_on_the_models_schedule():
    from reverie.samplers import build_scheduler

    assert sorted(EXPECTED_SCHEDULERS) == sorted(s.name for s in SAMPLERS)
    schedule = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "prediction_type": "v_prediction"}
    for name, (cls, options) in EXPECTED_SCHEDULERS.items():
        scheduler = build_scheduler(name, schedule, [1])
        assert type(scheduler).__name__ == cls, name
        for key, value in options.items():
            assert scheduler.config[key] == value, (name, key)
        assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.beta_end == 0.012, name


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_runs_and_is_reproducible(studio, sampler):
    a = generate(studio, prompt="a cat", seed=3, n_samples=1, sampler=sampler, steps=4)
    b = generate(studio, prompt="a cat", seed=3, n_samples=1, sampler=sampler, steps=4)
    image = pixels(a.images[0].image)
    assert image.shape == (64, 64, 3)
    assert np.array_equal(image, pixels(b.images[0].image))
    assert image.std() > 0  # not a blank picture
    assert "Sampler: " + get_sampler(sampler).label in a.images[0].parameters


def test_cfg_and_negative_prompt_change_the_picture(studio):
    plain = pixels(generate(studio, prompt="a dog", seed=9, n_samples=1).images[0].image)
    negative = pixels(generate(studio, prompt="a dog", negative_prompt="grass, trees", seed=9, n_samples=1).images[0].image)
    assert np.abs(plain - negative).mean() > 0.5
    # CFG: more guidance moves the picture further from the unguided one, step by step
    by_cfg = {cfg: pixels(generate(studio, prompt="a dog", seed=9, n_samples=1, cfg_scale=cfg).images[0].image)
              for cfg in (1.0, 3.0, 9.0)}
    distance = {cfg: np.abs(picture - by_cfg[1.0]).mean() for cfg, picture in by_cfg.items()}
    assert 0 == distance[1.0] < distance[3.0] < distance[9.0]


def test_left_out_sampling_settings_come_from_the_model(studio):
    """reverie-mini samples with the settings its evaluation used; other models with reverie's."""
    tiny = studio.generate(make_request(model="tiny-random", width=64, height=64, prompt="x", seed=1, n_samples=1))
    assert (tiny.request.steps, tiny.request.cfg_scale, tiny.request.sampler) == (25, 7.5, "dpmpp_2m_karras")
    mini = studio.generate(make_request(model="mini", prompt="red apple", seed=1, n_samples=1, upscale=1))
    assert (mini.request.steps, mini.request.cfg_scale, mini.request.sampler) == (20, 4.0, "dpmpp_2m")
    assert "Steps: 20, Sampler: DPM++ 2M, CFG scale: 4" in mini.images[0].parameters
    given = studio.generate(make_request(model="mini", prompt="red apple", seed=1, n_samples=1, upscale=1, steps=3,
                                         cfg_scale=6, sampler="euler"))
    assert (given.request.steps, given.request.cfg_scale, given.request.sampler) == (3, 6.0, "euler")


def test_size_is_respected_and_non_square(studio):
    result = generate(studio, prompt="wide", seed=1, n_samples=1, width=96, height=64)
    assert result.images[0].image.size == (96, 64)


def test_img2img_strength_zero_returns_the_input(studio, photo):
    result = generate(studio, mode="img2img", prompt="oil painting", init_image=photo, strength=0.0,
                      n_samples=2, width=None, height=None)
    source = pixels(Image.open(photo))
    for image in result.images:
        assert np.array_equal(pixels(image.image), source)


def test_img2img_keeps_size_and_changes_more_with_strength(studio, photo):
    def made(strength):
        return generate(studio, mode="img2img", prompt="x", init_image=photo, strength=strength, seed=4, n_samples=1,
                        steps=10, width=None, height=None).images[0].image

    # The tiny random autoencoder does not keep pixels, so change is measured from its round trip
    # of the picture (the least strength), not from the source's own pixels.
    least, weak, strong = made(0.05), made(0.2), made(0.9)
    assert weak.size == (88, 72)  # 88x72: not padded, not resized
    assert np.abs(pixels(weak) - pixels(least)).mean() < np.abs(pixels(strong) - pixels(least)).mean()


def test_variations_use_new_seeds_and_the_source_prompt(studio, tmp_path):
    made = studio.generate(make_request(**FAST, prompt="a lighthouse", seed=77, n_samples=1), outdir=tmp_path)
    source = made.images[0].path
    varied = studio.generate(make_request(**FAST | {"width": None, "height": None}, mode="variations",
                                          init_image=str(source), seed=500, n_samples=2))
    assert varied.request.prompt == "a lighthouse"
    assert varied.seeds == [500, 501]
    a, b = (pixels(img.image) for img in varied.images)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-inpainting"])
def test_inpaint_changes_only_the_masked_area(studio, photo, tmp_path, model):
    mask = np.zeros((72, 88), dtype=np.uint8)
    mask[16:48, 24:64] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    result = generate(studio, model=model, mode="inpaint", prompt="a hole", init_image=photo, mask_image=str(mask_path),
                      seed=5, n_samples=2, width=None, height=None)
    source = pixels(Image.open(photo))
    for image in result.images:
        out = pixels(image.image)
        assert out.shape == source.shape
        keep = mask == 0
        assert np.array_equal(out[keep], source[keep])
        assert np.abs(out[~keep] - source[~keep]).mean() > 5  # the masked area really was repainted


def test_outpaint_keeps_the_original_and_fills_the_new_area(studio, photo):
    result = generate(studio, mode="outpaint", prompt="more sky", init_image=photo, outpaint_left=16, outpaint_up=8,
                      outpaint_right=5, seed=6, n_samples=1, width=None, height=None)
    out = pixels(result.images[0].image)
    source = pixels(Image.open(photo))
    # 88+16+5 = 109 -> rounded up to 112 on the right; 72+8 = 80
    assert out.shape == (80, 112, 3)
    assert np.array_equal(out[8 : 8 + 72, 16 : 16 + 88], source)
    assert out[:, :16].std() > 0


def test_stop_keeps_finished_batches(studio):
    events = []

    def stop_after_first_picture():
        return any(e.stage == "image" for e in events)

    result = studio.generate(make_request(**FAST, prompt="x", seed=1, n_samples=1, n_iter=3),
                             progress=events.append, should_stop=stop_after_first_picture)
    assert result.interrupted
    assert len(result.images) == 1 and result.seeds == [1]


def test_ctrl_c_keeps_finished_pictures_on_disk(studio, tmp_path):
    seen = []

    def interrupt_in_second_batch(event):
        seen.append(event)
        if event.stage == "denoise" and event.batch == 1:
            raise KeyboardInterrupt

    result = studio.generate(make_request(**FAST, prompt="x", seed=1, n_samples=2, n_iter=3), outdir=tmp_path,
                             progress=interrupt_in_second_batch)
    assert result.interrupted and result.seeds == [1, 2]
    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("*.png")) == ["1", "2"]


def test_progress_reports_every_step(studio):
    events = []
    studio.generate(make_request(**FAST | {"steps": 5}, prompt="x", seed=1, n_samples=1, sampler="euler"),
                    progress=events.append)
    steps = [e.step for e in events if e.stage == "denoise"]
    assert steps == [1, 2, 3, 4, 5]


# -- a user's mistakes ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "fields, field",
    [
        ({"width": 100}, "width"),
        ({"height": 30}, "height"),
        ({"steps": 0}, "steps"),
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"sampler": "warp_drive"}, "sampler"),
        ({"mode": "img2img"}, "init_image"),
        ({"mode": "inpaint", "init_image": "x.png"}, "mask_image"),
        ({"mode": "outpaint", "init_image": "x.png"}, "outpaint"),
        ({"strength": 1.5}, "strength"),
        ({"colour": "red"}, "colour"),
        ({"dtype": "fp8"}, "dtype"),
        ({"sampler": "lcm", "steps": 80}, "lcm"),
    ],
)
def test_bad_requests_name_the_field(fields, field):
    with pytest.raises(BadRequest) as info:
        make_request(prompt="x", **fields)
    assert field in str(info.value)


def test_prompt_syntax_error_names_the_position(studio):
    with pytest.raises(PromptSyntaxError) as info:
        generate(studio, prompt="a (red apple", seed=1, n_samples=1)
    assert info.value.position == 2


def test_missing_init_image_is_a_clear_error(studio, tmp_path):
    with pytest.raises(ImageInputError, match="init_image: no file"):
        generate(studio, mode="img2img", prompt="x", init_image=str(tmp_path / "nope.png"), n_samples=1)


def test_not_an_image_is_a_clear_error(studio, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    with pytest.raises(ImageInputError, match="not a readable image"):
        generate(studio, mode="img2img", prompt="x", init_image=str(bogus), n_samples=1)


@pytest.mark.parametrize("size", [(50, 50), (44, 36)])  # another shape, or the same shape at half the size
def test_mask_of_another_size_is_refused(studio, photo, tmp_path, size):
    Image.new("L", size, 255).save(tmp_path / "m.png")
    with pytest.raises(ImageInputError, match=f"the mask is {size[0]}x{size[1]} but the image is 88x72; give a mask of the same size"):
        generate(studio, mode="inpaint", prompt="x", init_image=photo, mask_image=str(tmp_path / "m.png"), n_samples=1,
                 width=None, height=None)


def test_unknown_model_and_offline_hub_id_fail_at_once(studio):
    with pytest.raises(ModelNotFound, match="no model named"):
        generate(studio, model="./no/such/model", prompt="x")
    with pytest.raises(ModelNotFound, match="offline"):
        generate(studio, model="someone/some-model", prompt="x")


def test_a_size_that_cannot_fit_is_refused_before_work(studio, monkeypatch):
    monkeypatch.setenv("REVERIE_MEMORY_LIMIT", str(64 * 2**20))
    events = []
    with pytest.raises(OutOfMemory, match="width/height"):
        studio.generate(make_request(**FAST | {"width": 2048, "height": 2048}, prompt="x", n_samples=4),
                        progress=events.append)
    assert not [e for e in events if e.stage == "denoise"]


def test_bf16_runs_and_stays_close_to_fp32(studio):
    full = generate(studio, prompt="a fish", seed=2, n_samples=1, sampler="euler")
    half = generate(studio, prompt="a fish", seed=2, n_samples=1, sampler="euler", dtype="bf16")
    diff = np.abs(pixels(full.images[0].image) - pixels(half.images[0].image))
    assert diff.mean() < 12  # same picture, bf16 rounding only


def test_attention_slicing_and_vae_tiling_keep_the_picture(studio):
    plain = generate(studio, prompt="a tower", seed=4, n_samples=1, width=160, height=160, sampler="euler")
    lean = generate(studio, prompt="a tower", seed=4, n_samples=1, width=160, height=160, sampler="euler",
                    attention_slicing=True, vae_tiling=True)
    assert lean.request.vae_tiling and lean.request.attention_slicing
    assert lean.images[0].image.size == (160, 160)
    diff = np.abs(pixels(plain.images[0].image) - pixels(lean.images[0].image))
    assert diff.mean() < 20  # tiles are blended; the picture is the same picture
