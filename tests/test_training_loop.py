"""The training loop: runs of several parts (a GAN), devices and precision, checkpoints that resume exactly."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from reverie.errors import BadRequest, ReverieError
from reverie.training.device import Precision, training_device
from reverie.training.loop import Part, TrainConfig, Trainer


def toy_gan():
    """A 1-D GAN: the generator maps 2-D noise to numbers, the discriminator tells them from N(3, 0.5)."""
    torch.manual_seed(0)
    generator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    discriminator = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1))
    return generator, discriminator


def train_gan(out, steps, save_every=3):
    """Train the toy GAN to `steps` (resuming from `out`); return the trainer."""
    generator, discriminator = toy_gan()
    config = TrainConfig(steps=steps, batch_size=16, lr=2e-3, warmup=2, save_every=save_every, sample_every=1000,
                         ema_decay=0.9, device="cpu")
    trainer = Trainer({
        "discriminator": Part(discriminator, lr=4e-3, betas=(0.5, 0.999), schedule="constant", ema=False),
        "generator": Part(generator, betas=(0.5, 0.999)),
    }, out, config, "toy-gan")

    def step(step_index, rng):
        real = 3 + 0.5 * torch.randn(16, 1, generator=rng)
        fake = generator(torch.randn(16, 2, generator=rng))
        real_score, fake_score = discriminator(real), discriminator(fake.detach())
        trainer.update("discriminator", F.binary_cross_entropy_with_logits(real_score, torch.ones_like(real_score))
                       + F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score)))
        # against the discriminator as it is now, after its step
        fooled = discriminator(fake)
        trainer.update("generator", F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled)))
        return {"fake_mean": fake.mean().detach()}

    trainer.run(step, quiet=True)
    return trainer


def everything(trainer):
    """Every tensor the run's future depends on: weights, EMA weights, optimizer state, per part."""
    tensors = {}
    for name, learner in trainer.parts.items():
        tensors.update({f"{name}.{k}": v for k, v in learner.module.state_dict().items()})
        if learner.ema is not None:
            tensors.update({f"{name}.ema.{i}": p for i, p in enumerate(learner.ema.shadow_params)})
        for index, state in learner.optimizer.state_dict()["state"].items():
            tensors.update({f"{name}.adam.{index}.{k}": v for k, v in state.items()})
    return tensors


def test_a_two_optimiser_run_resumes_bit_for_bit(tmp_path):
    straight = everything(train_gan(tmp_path / "straight", 6))
    train_gan(tmp_path / "resumed", 3)
    resumed_trainer = train_gan(tmp_path / "resumed", 6)
    assert resumed_trainer.step == 6
    resumed = everything(resumed_trainer)
    assert set(resumed) == set(straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert resumed_trainer.parts["generator"].ema.optimization_step == 6
    # each part's own lr schedule: the discriminator's stays flat after warm-up, the generator's decays
    assert resumed_trainer.parts["discriminator"].optimizer.param_groups[0]["lr"] == 4e-3
    assert resumed_trainer.parts["generator"].optimizer.param_groups[0]["lr"] < 2e-3
    files = sorted(p.name for p in (tmp_path / "resumed" / "checkpoint").iterdir())
    assert files == ["discriminator.optimizer.pt", "discriminator.safetensors", "generator.ema.safetensors",
                     "generator.optimizer.pt", "generator.safetensors", "state.json"]
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and state["parts"]["generator"]["ema_steps"] == 6
    assert all(t.device.type == "cpu" for t in load_file(tmp_path / "resumed" / "checkpoint" / "generator.safetensors").values())


def test_a_part_learns_from_its_own_loss_only(tmp_path):
    generator, discriminator = toy_gan()
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    config = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup=1, save_every=10, sample_every=10, device="cpu")
    trainer = Trainer({"generator": generator, "discriminator": Part(discriminator, ema=False)}, tmp_path, config, "toy")

    def step(step_index, rng):  # only the generator learns, through the discriminator's network
        trainer.update("generator", -discriminator(generator(torch.randn(4, 2, generator=rng))).mean())

    trainer.run(step, quiet=True)
    assert all(torch.equal(before[k], v) for k, v in discriminator.state_dict().items())
    assert all(p.grad is None for p in discriminator.parameters())
    with pytest.raises(ValueError, match="several parts"):
        Trainer({"generator": generator, "discriminator": discriminator}, tmp_path / "other", config, "toy").run(
            lambda step_index, rng: {"loss": generator(torch.ones(1, 2)).sum()}, quiet=True)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    train_gan(tmp_path, 3)
    with pytest.raises(ReverieError, match="holds a toy-gan run"):
        Trainer(torch.nn.Linear(1, 1), tmp_path, TrainConfig(steps=1), "autoencoder")


def test_checkpoints_from_before_parts_still_resume(tmp_path):
    """The one-model layout: model.safetensors, ema.safetensors, optimizer.pt, state.json with ema_steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    save_file({str(i): (p.detach() * 0 + 7).contiguous() for i, p in enumerate(model.parameters())}, folder / "ema.safetensors")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps({"step": 5, "ema_steps": 5, "name": "old", "config": {}}))
    torch.manual_seed(1)
    trainer = Trainer(torch.nn.Linear(3, 2), tmp_path, TrainConfig(steps=9), "old")
    assert trainer.step == 5 and trainer.parts["model"].ema.optimization_step == 5
    assert torch.equal(trainer.module().weight, model.weight)
    assert all(torch.equal(v, torch.full_like(v, 7)) for v in trainer.ema_model_state().values())
    assert trainer.parts["model"].optimizer.state_dict()["state"][0]["step"] == 1


def test_devices_and_precisions_are_checked(monkeypatch):
    assert training_device("cpu") == torch.device("cpu")
    for name in ("gpu", "cuda:x", "auto:0"):
        with pytest.raises(BadRequest, match="unknown device"):
            training_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadRequest, match="device: CUDA was asked for but no CUDA GPU is visible"):
        training_device("cuda")
    assert training_device("auto").type in ("cpu", "mps")
    cpu = torch.device("cpu")
    assert Precision.choose(cpu, bf16=True).dtype == torch.bfloat16 and not Precision.choose(cpu, bf16=True).scaled
    assert Precision.choose(cpu).dtype is None
    with pytest.raises(BadRequest, match="fp16 training needs a CUDA GPU"):
        Precision.choose(cpu, fp16=True)
    with pytest.raises(BadRequest, match="not both"):
        Precision.choose(cpu, bf16=True, fp16=True)


def test_bf16_autocast_runs_on_the_cpu(tmp_path):
    seen = []
    model = torch.nn.Linear(4, 4)
    config = TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, save_every=10, sample_every=10, bf16=True, device="cpu")
    trainer = Trainer(model, tmp_path, config, "toy")

    def step(step_index, rng):
        out = model(torch.randn(2, 4, generator=rng))
        seen.append(out.dtype)
        return {"loss": out.float().pow(2).mean()}

    trainer.run(step, quiet=True)
    assert seen == [torch.bfloat16] * 2 and model.weight.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_run_trained_on_the_gpu_resumes_on_the_cpu(tmp_path, precision):
    def run(steps, device):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        config = TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup=1, save_every=2, sample_every=10, device=device,
                             bf16=precision == "bf16" and device != "cpu", fp16=precision == "fp16" and device != "cpu")
        trainer = Trainer(model, tmp_path, config, "toy")

        def step(step_index, rng):
            x = torch.randn(8, 4, generator=rng).to(trainer.device)
            assert next(model.parameters()).device.type == trainer.device.type
            return {"loss": (model(x).float() - x).pow(2).mean()}

        trainer.run(step, quiet=True)
        return trainer

    gpu = run(4, "cuda")
    assert gpu.device.type == "cuda" and gpu.parts["model"].scaler.is_enabled() == (precision == "fp16")
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert bool(state["parts"]["model"]["scaler"]) == (precision == "fp16")
    cpu = run(6, "cpu")
    assert cpu.step == 6 and next(cpu.module().parameters()).device.type == "cpu"
