"""Dynamic batching: requests that share forward passes each get exactly their own seeds' pictures.

The UNet's rows do not depend on their batch-mates (models/batch_invariance.py); a shared run
gives each request the pictures it makes alone, bit for bit, with its own progress; the embedded
worker takes compatible queued jobs together. (The Celery worker's side: test_jobs_batching.py.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reverie.models.batch_invariance import STEADY_PICTURES, steady_rows
from reverie.models.registry import load_model
from reverie.progress import ProgressEvent
from test_server_api import make_client, wait_done

FAST = {"steps": 3, "width": 64, "height": 64}


def pixels_of(result) -> list[np.ndarray]:
    return [np.asarray(image.image) for image in result.images]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("model", ["mini", "tiny-random"])
def test_a_unet_row_is_the_same_whatever_batch_it_shares_and_wherever_it_sits(model, threads):
    """Batches of up to STEADY_PICTURES pictures (a shared pass's most), with one thread (as the
    deployment's workers run) and two."""
    kept = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_steady(model)
    finally:
        torch.set_num_threads(kept)


def _check_steady(model):
    components = load_model(model, dtype=torch.float32)
    unet = steady_rows(components.unet)
    generator = torch.Generator().manual_seed(0)
    side = unet.config.sample_size
    channels, width = unet.config.in_channels, unet.config.cross_attention_dim

    def noise(count):
        return torch.randn(count, channels, side, side, generator=generator)

    text = torch.randn(2, 77, width, generator=generator)  # (negative, prompt) states
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(6):
            mine = rng.randint(1, 3)
            before = rng.randint(0, STEADY_PICTURES - mine)
            after = rng.randint(0, STEADY_PICTURES - mine - before)
            latents = noise(mine)
            alone = unet(torch.cat([latents, latents]), 400,
                         encoder_hidden_states=text.repeat_interleave(mine, 0)).sample
            everyone = torch.cat([noise(before), latents, noise(after)])
            count = len(everyone)
            shared = unet(torch.cat([everyone, everyone]), 400, encoder_hidden_states=text.repeat_interleave(count, 0)).sample
            rows = torch.cat([shared[before:before + mine], shared[count + before:count + before + mine]])
            assert torch.equal(rows, alone), (mine, before, after)


def test_a_steady_linear_layer_gives_each_row_alike_in_products_of_any_size():
    layer = steady_rows(torch.nn.Sequential(torch.nn.Linear(64, 256)))
    rows = torch.randn(9, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        single = [layer(rows[i:i + 1]) for i in range(9)]
        for count in range(1, 10):
            product = layer(rows[:count])
            assert all(torch.equal(product[i:i + 1], single[i]) for i in range(count)), count
        same = rows[:1].expand(7, -1)  # one timestep for a whole batch: computed once
        assert torch.equal(layer(same), single[0].expand(7, -1))


REQUESTS = [
    {"prompt": "red apple", "seed": 5, "n_samples": 2, **FAST},
    {"prompt": "a blue car", "seed": 100, "n_samples": 1, "n_iter": 2, **FAST},
    {"prompt": "a cat face", "negative_prompt": "blurry", "seed": 7, "n_samples": 3, **FAST},
]


def test_shared_requests_get_their_own_seeds_pictures_bit_for_bit(studio):
    requests = [dict(request, model="tiny-random") for request in REQUESTS]
    assert len({studio.batch_key(request) for request in requests}) == 1
    alone = [studio.run(request, grid=False) for request in requests]
    events = [[] for _ in requests]
    shared = studio.run_shared([{"request": request, "grid": False, "previews": True, "progress": events[number].append}
                                for number, request in enumerate(requests)], limit=4)
    for own, together in zip(alone, shared):
        assert together.seeds == own.seeds
        assert all(np.array_equal(a, b) for a, b in zip(pixels_of(own), pixels_of(together)))
    # Each request hears of its own batches and pictures only, with previews of its own width.
    for request, heard in zip(requests, events):
        count = request.get("n_iter", 1)
        batches = {event.batch for event in heard if event.stage == "denoise"}
        assert batches == set(range(count)) and all(event.batches == count for event in heard if event.stage == "denoise")
        images = [event for event in heard if event.stage == "image"]
        assert [event.step for event in images] == list(range(1, request["n_samples"] * count + 1))
        previews = [event.preview for event in heard if event.preview is not None]
        assert previews and all(preview.width == preview.height * request["n_samples"] for preview in previews)


def test_requests_that_cannot_share_have_other_keys_or_none(studio):
    base = {"prompt": "red apple", "model": "tiny-random", **FAST}
    key = studio.batch_key(base)
    assert key is not None
    assert studio.batch_key(base | {"prompt": "a house", "seed": 3, "n_samples": 2, "n_iter": 3}) == key
    for other in ({"steps": 4}, {"width": 128}, {"sampler": "ddim"}, {"cfg_scale": 3.0},
                  {"model": "mini", "runtime": "torch"}):
        assert studio.batch_key(base | other) not in (None, key), other
    # ... and what the torch-free path serves (mini under runtime auto) runs there, alone
    for alone in ({"rerank": 2, "score": True}, {"chaos": 50}, {"made": 1}, {"keep_only": 0}, {"model": "mini"}):
        assert studio.batch_key(base | alone) is None, alone
    assert studio.batch_key({"mode": "dream", "prompt": "x"}) is None


def test_an_error_in_one_request_ends_it_alone_and_a_stopped_one_drops_out(studio):
    good = {"prompt": "red apple", "seed": 1, "n_samples": 1, "n_iter": 3, "model": "tiny-random", **FAST}
    broken = good | {"prompt": "an apple <lora:no-such-lora:1>", "seed": 50}
    stopping = good | {"prompt": "a house", "seed": 80}
    heard: list[ProgressEvent] = []
    runs = [{"request": good, "grid": False}, {"request": broken, "grid": False},
            {"request": stopping, "grid": False, "progress": heard.append,
             "should_stop": lambda: any(event.stage == "image" for event in heard)}]
    done, failed, stopped = studio.run_shared(runs, limit=8)
    assert isinstance(failed, Exception) and "no-such-lora" in str(failed)
    assert done.seeds == [1, 2, 3] and not done.interrupted
    assert stopped.interrupted and stopped.seeds == [80]
    alone = studio.run(good, grid=False)
    assert all(np.array_equal(a, b) for a, b in zip(pixels_of(alone), pixels_of(done)))


def test_the_embedded_worker_takes_compatible_queued_jobs_together(tmp_path, studio):
    bodies = [{"prompt": "red apple", "seed": 11, "n_samples": 2, **FAST},
              {"prompt": "a lighthouse", "seed": 20, "n_samples": 1, **FAST},
              {"prompt": "a boat", "seed": 30, "n_samples": 2, **FAST},
              {"prompt": "bigger", "seed": 40, "n_samples": 1, **FAST, "width": 128}]  # another size: alone
    with make_client(tmp_path, start_worker=False) as client:
        ids = [client.post("/api/v1/jobs", json=body).json()["id"] for body in bodies]
    with make_client(tmp_path) as client:  # the worker starts with four jobs waiting
        jobs = [wait_done(client, job_id) for job_id in ids]
        assert [job["status"] for job in jobs] == ["done"] * 4
        gallery = client.app.state.studio.gallery
        rows = [gallery.job(job_id) for job_id in ids]
        # One worker thread: the first three ran in one shared run (each started before any
        # finished); the fourth, another size, ran after them.
        assert max(row.started for row in rows[:3]) < min(row.finished for row in rows[:3])
        assert rows[3].started >= max(row.finished for row in rows[:3])
        for body, row in zip(bodies, rows):
            made = sorted(gallery.job_images(row), key=lambda image: image.index)
            alone = studio.run(body | {"model": "tiny-random"}, grid=False)
            assert [image.seed for image in made] == alone.seeds
            for image, own in zip(made, pixels_of(alone)):
                assert np.array_equal(np.asarray(load_rgb(gallery.image_path(image))), own)


def load_rgb(path):
    from PIL import Image

    with Image.open(path) as picture:
        return picture.convert("RGB")
