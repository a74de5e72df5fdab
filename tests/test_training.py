"""Training machinery: resumable runs, the losses, and the model parts built for reverie-mini."""

import json

import torch
from safetensors.torch import load_file

from reverie.training.autoencoder import autoencoder_loss, build_autoencoder, to_unit_range, train_autoencoder
from reverie.training.denoiser import SCHEDULE, build_unet, denoiser_loss
from reverie.training.loop import TrainConfig


def pictures(n=12, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def small_config(steps, **kw):
    return TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup=2, save_every=3, sample_every=1000, **kw)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    data = pictures()
    straight = train_autoencoder(data, tmp_path / "straight", small_config(6), quiet=True)
    train_autoencoder(data, tmp_path / "resumed", small_config(3), quiet=True)
    resumed = train_autoencoder(data, tmp_path / "resumed", small_config(6), quiet=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    state = load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")
    assert set(state) == set(a)
    assert (tmp_path / "resumed" / "log.jsonl").exists()


def test_autoencoder_learns_to_reconstruct(tmp_path):
    data = pictures(n=4, size=16)
    torch.manual_seed(0)
    vae = build_autoencoder(16, channels=(32, 32))
    batch = to_unit_range(data)
    g = torch.Generator().manual_seed(0)
    before = float(autoencoder_loss(vae, batch, g)["l1"])
    opt = torch.optim.Adam(vae.parameters(), 2e-3)
    for _ in range(60):
        loss = autoencoder_loss(vae, batch, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(autoencoder_loss(vae, batch, g)["l1"]) < 0.6 * before


def test_denoiser_loss_falls_when_fitting_one_batch():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet(8, cross_attention_dim=16, channels=(32, 64))
    scheduler = DDPMScheduler.from_config(SCHEDULE)
    latents, states = torch.randn(4, 4, 8, 8), torch.randn(4, 6, 16)
    opt = torch.optim.Adam(unet.parameters(), 1e-3)
    losses = []
    for i in range(40):
        loss = denoiser_loss(unet, scheduler, latents, states, torch.Generator().manual_seed(i % 2))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])


def test_train_commands_take_warmup_and_ema_decay(monkeypatch, capsys, tmp_path):
    from reverie.cli_train import _config
    from conftest import run_cli

    config = _config(10, 4, 1e-3, False, 5, 5, warmup=7, ema_decay=0.99)
    assert (config.warmup, config.ema_decay) == (7, 0.99)
    (tmp_path / "data").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "train", "autoencoder", "--data", str(tmp_path / "data"), "--ema-decay", "1.5")
    assert code == 2 and "--ema-decay" in err


def test_the_schedule_ends_in_pure_noise_for_every_sampler():
    """(Nearly) zero terminal SNR: the last training step leaks 1.6% of the picture, not SD's 7%."""
    from diffusers import DDPMScheduler

    from reverie.samplers import SAMPLERS, build_scheduler

    reference = DDPMScheduler.from_config(SCHEDULE).alphas_cumprod
    sd = DDPMScheduler.from_config({k: v for k, v in SCHEDULE.items() if k != "trained_betas"}).alphas_cumprod
    assert float(sd[-1].sqrt()) > 0.06  # what the rescale fixes
    assert float(reference[-1].sqrt()) < 0.02
    assert abs(float(reference[0] - sd[0])) < 1e-6  # the low-noise end is SD's
    assert bool((reference[1:] < reference[:-1]).all())
    for sampler in SAMPLERS:
        scheduler = build_scheduler(sampler.name, SCHEDULE, seeds=[0])
        assert torch.allclose(scheduler.alphas_cumprod[:-1].double(), reference[:-1].double(), rtol=1e-4), sampler.name


def test_denoiser_loss_weighs_the_noisiest_steps_fully():
    """Pure-noise steps must count: that is where colour and layout are decided from the text."""
    from diffusers import DDPMScheduler

    class Zero(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    scheduler = DDPMScheduler.from_config(SCHEDULE)
    latents = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    # At the last step v = -x0 (nearly), so a model predicting zeros scores the v-MSE at weight 1.
    last = torch.full((64,), SCHEDULE["num_train_timesteps"] - 1)
    rng = torch.Generator().manual_seed(1)
    loss = float(denoiser_loss(Zero(), scheduler, latents, torch.zeros(64, 2, 4), rng, timesteps=last)["loss"])
    assert abs(loss - float(latents.pow(2).mean())) < 0.05


def test_decoder_finetune_keeps_the_latent_space(tmp_path):
    from reverie.training.autoencoder import finetune_decoder

    data = pictures(n=8, size=16)
    torch.manual_seed(0)
    vae = build_autoencoder(16, channels=(32, 32))
    encoder_before = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    decoder_before = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    x = to_unit_range(data)
    with torch.no_grad():
        latents_before = vae.encode(x).latent_dist.mean
        l1_before = float((vae.decode(latents_before).sample - x).abs().mean())
    tuned = finetune_decoder(vae, data, tmp_path / "decoder", small_config(30), quiet=True)
    state = tuned.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder_before.items())
    assert any(not torch.equal(state[k], v) for k, v in decoder_before.items())
    with torch.no_grad():
        assert torch.equal(tuned.encode(x).latent_dist.mean, latents_before)
        assert float((tuned.decode(latents_before).sample - x).abs().mean()) < l1_before
    assert (tmp_path / "decoder" / "checkpoint" / "state.json").is_file()


def test_a_unet_run_can_start_from_given_weights(tmp_path):
    from reverie.training.denoiser import train_denoiser

    class States:
        text_encoder = type("Encoder", (), {"config": type("Config", (), {"hidden_size": 16})()})()

        def __call__(self, captions):
            return torch.ones(len(captions), 3, 16)

    torch.manual_seed(1)  # not the run's seed
    start = build_unet(8, cross_attention_dim=16, channels=(32, 64))
    start.save_pretrained(tmp_path / "start")
    latents = torch.randn(4, 4, 8, 8)
    config = TrainConfig(steps=2, batch_size=2, lr=1e-9, warmup=1, save_every=10, sample_every=10, ema_decay=0.5)
    tuned = train_denoiser(latents, [["a"]] * 4, States(), tmp_path / "run", config, quiet=True, init=tmp_path / "start")
    assert tuple(tuned.config.block_out_channels) == (32, 64)  # the given model, not the default build
    a, b = start.state_dict(), tuned.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # lr 1e-9: still the given weights


def test_train_folders_must_be_model_folders(monkeypatch, capsys, tmp_path):
    from conftest import run_cli

    data, vae = tmp_path / "data", tmp_path / "vae"
    data.mkdir()
    vae.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "train", "unet", "--data", str(data), "--vae", str(tmp_path / "nowhere"))
    assert code == 2 and "--vae" in err and "config.json" in err
    (vae / "config.json").write_text("{}")
    code, _, err = run_cli(monkeypatch, capsys, "train", "unet", "--data", str(data), "--vae", str(vae), "--init", str(tmp_path / "nowhere"))
    assert code == 2 and "--init" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "autoencoder", "--data", str(data), "--init", str(tmp_path / "nowhere"))
    assert code == 2 and "--init" in err and "autoencoder" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "grow", "--data", str(data), "--small", str(data),
                           "--vae", str(tmp_path / "nowhere"))
    assert code == 2 and "--vae" in err and "autoencoder" in err


def test_an_autoencoder_run_can_start_from_given_weights_and_balance_colours(tmp_path):
    torch.manual_seed(1)  # not the run's seed
    start = build_autoencoder(16, channels=(32, 32))
    start.save_pretrained(tmp_path / "start")
    data = pictures(n=8, size=16)
    config = TrainConfig(steps=2, batch_size=2, lr=1e-9, warmup=1, save_every=10, sample_every=10, ema_decay=0.5)
    tuned = train_autoencoder(data, tmp_path / "run", config, quiet=True, init=tmp_path / "start", balance_colours=True)
    assert tuple(tuned.config.block_out_channels) == (32, 32)  # the given model, not the default build
    a, b = start.state_dict(), tuned.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # lr 1e-9: still the given weights


def test_denoiser_draws_latents_by_the_weights_given(tmp_path):
    from reverie.training.denoiser import train_denoiser

    seen = []

    class States:
        text_encoder = type("Encoder", (), {"config": type("Config", (), {"hidden_size": 16})()})()

        def __call__(self, captions):
            seen.extend(captions)
            return torch.ones(len(captions), 3, 16)

    latents = torch.randn(4, 4, 8, 8)
    captions = [["never"], ["never"], ["always"], ["never"]]
    weights = torch.tensor([0.0, 0.0, 1.0, 0.0])
    config = TrainConfig(steps=3, batch_size=4, lr=1e-4, warmup=1, save_every=10, sample_every=10)
    torch.manual_seed(0)
    train_denoiser(latents, captions, States(), tmp_path / "run", config, quiet=True, weights=weights)
    assert seen and set(seen) <= {"always", ""}  # "" where the caption was dropped for CFG


def test_colour_classes_tell_hues_apart_and_balancing_favours_rare_ones():
    from reverie.training.autoencoder import balancing_weights, colour_classes

    def swatch(rgb):
        picture = torch.full((3, 16, 16), 255, dtype=torch.uint8)
        picture[:, 4:12, 4:12] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
        return picture

    red, green, blue, purple = swatch((220, 40, 40)), swatch((60, 180, 60)), swatch((40, 90, 220)), swatch((150, 60, 190))
    black, page = swatch((20, 20, 20)), torch.full((3, 16, 16), 255, dtype=torch.uint8)
    classes = colour_classes(torch.stack([red, green, blue, purple, black, page])).tolist()
    assert len(set(classes)) == 6
    assert classes[4] == 12 and classes[5] == 14  # dark, and a blank page counts as light
    many = colour_classes(torch.stack([red] * 9 + [green]))
    weights = balancing_weights(many, power=1.0)
    assert abs(float(weights[-1] / weights.sum()) - 0.5) < 1e-6  # one green picture drawn as often as nine red


def test_robust_clip_views_are_noisy_zoomed_parts_of_each_picture():
    from reverie.training.clip import ROBUST_NOISE, robust_augment

    g = torch.Generator().manual_seed(0)
    picture = torch.zeros(3, 64, 64)
    picture[0, :32], picture[0, 32:], picture[2] = 0.8, -0.8, 0.5  # light top, dark bottom
    views = robust_augment(picture.repeat(16, 1, 1, 1), g)
    assert views.shape == (16, 3, 64, 64)
    # every copy of the same picture is seen differently (its own crop, flip and noise) ...
    assert all((views[i] - views[j]).abs().mean() > 1e-3 for i in range(16) for j in range(i))
    # ... yet each view still looks like its picture, not like the picture upside down
    own = [(view - picture).abs().mean() for view in views]
    other = [(view - picture.flip(-2)).abs().mean() for view in views]
    assert sum(own) < 0.5 * sum(other)
    # and the noise is bounded: a flat picture stays within a few ROBUST_NOISE of itself
    flat = robust_augment(torch.zeros(64, 3, 16, 16), g)
    assert 0.05 < flat.std() < ROBUST_NOISE


def test_a_robust_clip_run_trains_and_exports(tmp_path):
    from reverie.models.minilm import load_minilm
    from reverie.training.clip import train_clip

    tokenizer, text_encoder = load_minilm()
    images = pictures(n=6, size=64)
    captions = [[f"thing {i}", f"object {i}"] for i in range(6)]
    encoder = train_clip(images, captions, tokenizer, text_encoder, tmp_path / "clip",
                         small_config(3), quiet=True, robust=True)
    vectors = encoder(to_unit_range(images))
    assert vectors.shape == (6, 384) and torch.allclose(vectors.norm(dim=-1), torch.ones(6), atol=1e-4)
    assert (tmp_path / "clip" / "checkpoint" / "model.safetensors").exists()


def test_a_grown_autoencoder_keeps_every_old_weight_and_starts_as_the_old_one_larger():
    import torch.nn.functional as F

    from reverie.training.grow import grow_autoencoder

    torch.manual_seed(0)
    old = build_autoencoder(16, channels=(32, 32)).eval()
    grown = grow_autoencoder(old).eval()
    assert grown.config.sample_size == 32 and len(grown.config.block_out_channels) == 3
    old_state, new_state = old.state_dict(), grown.state_dict()
    for key, value in old_state.items():
        new_key = key.replace(f"encoder.down_blocks.{key.split('.')[2]}.",
                              f"encoder.down_blocks.{int(key.split('.')[2]) + 1}.") if key.startswith("encoder.down_blocks.") else key
        assert torch.equal(new_state[new_key], value), key
    h = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        # The new encoder level averages 2x2 blocks; the new decoder level passes its input on; the
        # decoder's new upsampling repeats each pixel.
        assert torch.allclose(grown.encoder.down_blocks[0](h), F.avg_pool2d(h, 2), atol=1e-6)
        assert torch.allclose(grown.decoder.up_blocks[2].resnets[0](h, None), h, atol=1e-6)
        upsample = grown.decoder.up_blocks[1].upsamplers[0]
        assert torch.allclose(upsample(h), F.interpolate(h, scale_factor=2, mode="nearest"), atol=1e-6)
        # 32 px pictures land where their 16 px halves did, and latents are drawn at 32 px.
        x = to_unit_range(pictures(n=2, size=32))
        latent = grown.encode(x).latent_dist.mean
        assert latent.shape == old.encode(F.avg_pool2d(x, 2)).latent_dist.mean.shape
        assert grown.decode(latent).sample.shape == (2, 3, 32, 32)


def test_growing_trains_the_decoder_toward_the_large_pictures_and_the_encoder_toward_the_old_latents(tmp_path):
    from reverie.training.autoencoder import posteriors
    from reverie.training.grow import grow_autoencoder, halve, train_grown

    torch.manual_seed(0)
    old = build_autoencoder(16, channels=(32, 32)).eval()
    large = pictures(n=8, size=32)
    mean, _ = posteriors(old, halve(large))
    x = to_unit_range(large)

    def errors(model):
        with torch.no_grad():
            return (float((model.decode(mean).sample - x).abs().mean()),
                    float((model.encode(x).latent_dist.mean - mean).square().mean()))

    before = errors(grow_autoencoder(old).eval())
    grown = train_grown(old, large, tmp_path / "grown", small_config(40, ema_decay=0.5), quiet=True)
    after = errors(grown)
    assert after[0] < before[0] and after[1] < before[1]
    assert (tmp_path / "grown" / "checkpoint" / "state.json").is_file()


def plain_folder(folder, n=6, size=24):
    """Pictures with same-name .txt captions, some in a subfolder: a folder as people keep one for LoRA training."""
    from PIL import Image

    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i in range(n):
        path = folder / ("more" if i % 2 else "") / f"{colours[i % 6]}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), colours[i % 6]).save(path)
        path.with_suffix(".txt").write_text(f"a {colours[i % 6]} square\n{colours[i % 6]}\n", encoding="utf-8")
    return folder


def test_a_plain_folder_of_captioned_pictures_trains_the_autoencoder_and_the_unet(monkeypatch, capsys, tmp_path):
    from conftest import run_cli

    data = plain_folder(tmp_path / "my pictures")
    small = ["--steps", "2", "--batch-size", "2", "--save-every", "1", "--sample-every", "100", "--warmup", "1"]
    code, out, err = run_cli(monkeypatch, capsys, "train", "autoencoder", "--data", str(data), "--size", "16",
                             "--out", str(tmp_path / "ae"), "--device", "cpu", *small)
    assert code == 0, err
    assert (tmp_path / "ae" / "vae" / "config.json").is_file() and "autoencoder saved" in out
    grids = []

    def sample_grid(unet, vae, tokenizer, text_encoder, path):  # the real one runs 160 UNet passes: minutes here
        assert unet.device == vae.device == text_encoder.device  # all on the training device
        grids.append(path.name)

    monkeypatch.setattr("reverie.training.mini.sample_grid", sample_grid)
    code, out, err = run_cli(monkeypatch, capsys, "train", "unet", "--data", str(data), "--vae", str(tmp_path / "ae" / "vae"),
                             "--out", str(tmp_path / "unet"), *small)
    assert code == 0, err
    assert (tmp_path / "unet" / "unet" / "config.json").is_file() and "unet saved" in out
    assert grids == ["unet-000002.png"]  # the grid at the last step
    state = json.loads((tmp_path / "unet" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["device"] == "auto"


def test_a_folder_without_pictures_is_a_clear_error_for_every_trainer(monkeypatch, capsys, tmp_path):
    from conftest import run_cli

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing to see", encoding="utf-8")
    torch.manual_seed(0)
    build_autoencoder(16, channels=(32, 32)).save_pretrained(tmp_path / "vae")
    for command in (["autoencoder"], ["clip"], ["upscaler"], ["unet", "--vae", str(tmp_path / "vae")],
                    ["decoder", "--vae", str(tmp_path / "vae")], ["grow", "--vae", str(tmp_path / "vae")]):
        code, _, err = run_cli(monkeypatch, capsys, "train", *command, "--data", str(empty), "--out", str(tmp_path / "run"))
        assert code == 2, (command, err)
        assert f"no pictures in {empty}" in " ".join(err.split()) and "png" in err, (command, err)
    code, _, err = run_cli(monkeypatch, capsys, "train", "unet", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "--data: no folder at" in err and ".txt captions" in " ".join(err.split())


def test_train_commands_take_a_device_and_refuse_one_that_is_not_here(monkeypatch, capsys, tmp_path):
    from reverie.cli_train import _config
    from conftest import run_cli

    assert _config(10, 4, 1e-3, False, 5, 5, 1, 0.9, device="cpu").device == "cpu"
    assert _config(10, 4, 1e-3, False, 5, 5, 1, 0.9).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = plain_folder(tmp_path / "data", n=2)
    for command in ("autoencoder", "decoder", "grow", "unet", "clip", "upscaler"):
        code, _, err = run_cli(monkeypatch, capsys, "train", command, "--data", str(data), "--device", "cuda")
        assert code == 2 and "--device: CUDA was asked for but no CUDA GPU is visible" in err, (command, err)
    code, _, err = run_cli(monkeypatch, capsys, "train", "clip", "--data", str(data), "--device", "tpu")
    assert code == 2 and "unknown device 'tpu'" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "clip", "--data", str(data), "--device", "cpu", "--fp16")
    assert code == 2 and "--fp16: fp16 training needs a CUDA GPU" in err


def test_bf16_on_a_cpu_without_it_warns_before_training(monkeypatch, capsys, tmp_path):
    from conftest import run_cli

    from reverie.device import cpu_has_native_bf16

    # Emulated bf16 made a decoder step 30x slower than fp32 on a 2-core AMD EPYC; the warning
    # comes before any data is read (here, a missing --vae stops the run right after it).
    data = plain_folder(tmp_path / "data", n=2)
    code, out, err = run_cli(monkeypatch, capsys, "train", "decoder", "--data", str(data), "--device", "cpu", "--bf16",
                             "--vae", str(tmp_path / "nowhere"))
    assert code == 2 and "is not an autoencoder folder" in err
    assert ("no native bf16" in out) == (not cpu_has_native_bf16()), out


def test_the_x2_upscaler_trains_from_the_built_in_x4_one(monkeypatch, capsys, tmp_path):
    """`reverie train upscaler --scale 2` starts from the x4 network's layers (its head, body and
    first doubling; its last convolution) and exports weights the x2 loader reads."""
    from conftest import run_cli

    from reverie.models.upscaler import load_upscaler

    data = plain_folder(tmp_path / "data", n=2, size=128)
    code, out, err = run_cli(monkeypatch, capsys, "train", "upscaler", "--scale", "2", "--data", str(data), "--size", "128",
                             "--out", str(tmp_path / "x2"), "--steps", "2", "--batch-size", "2", "--lr", "1e-5",
                             "--warmup", "1", "--save-every", "1", "--sample-every", "100")
    assert code == 0, err
    x2, x4 = load_upscaler(tmp_path / "x2" / "export", scale=2), load_upscaler()
    assert x2.scale == 2 and len(x2.up) == 4 and len(x4.up) == 7
    for mine, theirs in ((x2.head, x4.head), (x2.body[3].body[0], x4.body[3].body[0]), (x2.up[0], x4.up[0]),
                         (x2.up[3], x4.up[6])):
        difference = (mine.weight - theirs.weight).abs().max().item()
        assert 0 < difference < 1e-3  # two small steps away from the x4's weights: trained, from them
    code, _, err = run_cli(monkeypatch, capsys, "train", "upscaler", "--scale", "3", "--data", str(data))
    assert code == 2 and "--scale" in err and "2 or 4" in err
