"""Training machinery: resumable runs, the losses, and the model parts built for reverie-mini."""

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
    from test_cli import run_cli

    config = _config(10, 4, 1e-3, False, 5, 5, warmup=7, ema_decay=0.99)
    assert (config.warmup, config.ema_decay) == (7, 0.99)
    (tmp_path / "data").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "train", "unet", "--data", str(tmp_path / "data"), "--ema-decay", "1.5")
    assert code == 2 and "--ema-decay" in err
