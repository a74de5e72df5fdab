"""The LoRA picker and the Train view in a real headless Chromium (the fixtures of test_studio_browser)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# `models` is set before the page (and its picker) loads: the server reads the folder on each request.
from test_lora_studio import models  # noqa: F401  (fixture)
from test_studio_browser import browser, last_job, page, server  # noqa: F401  (fixtures)


def test_the_picker_writes_lora_tags_and_embeddings_at_the_cursor(models, page, server):  # noqa: F811
    page.click("#lora-picker summary")
    page.wait_for_selector("#lora-list button[data-lora='paper-cut']")
    assert "trigger “sks”" in page.inner_text("#lora-list")
    page.fill("#prompt", "a fox in the snow")
    page.evaluate("() => document.querySelector('#prompt').setSelectionRange(5, 5)")  # after "a fox"
    page.fill("#lora-list .network:has([data-lora='paper-cut']) input.weight", "0.6")
    page.click("#lora-list button[data-lora='paper-cut']")
    assert page.input_value("#prompt") == "a fox sks <lora:paper-cut:0.6> in the snow"  # with its trigger word
    page.evaluate("() => { const p = document.querySelector('#prompt'); p.setSelectionRange(p.value.length, p.value.length); }")
    page.click("#embedding-list button[data-embedding='grainy']")
    assert page.input_value("#prompt") == "a fox sks <lora:paper-cut:0.6> in the snow grainy"

    page.click("#advanced summary")
    page.fill("#steps", "2")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('#results .card').length === 4", timeout=120_000)
    assert last_job(server)["prompt"] == "a fox sks <lora:paper-cut:0.6> in the snow grainy"


def test_train_on_my_pictures_then_find_the_lora_in_the_picker(models, page, server, tmp_path):  # noqa: F811
    folder = tmp_path / "my-disc"
    folder.mkdir()
    for i in range(10):
        array = np.full((40, 40, 3), (30 + 20 * i, 90, 140), np.uint8)
        array[12:28, 10 + i % 4 : 26 + i % 4] = (230, 40, 40)
        Image.fromarray(array).save(folder / f"{i}.png")
    page.click("nav [data-view='train']")
    page.set_input_files("#train-pictures", [str(path) for path in sorted(folder.iterdir())])
    assert page.inner_text("#train-count") == "10 pictures"
    page.wait_for_function("document.querySelector('#train-model').options.length > 0", timeout=120_000)
    page.select_option("#train-model", "tiny-random")
    page.fill("#train-trigger", "zkx")
    page.fill("#train-name", "my-disc")
    page.fill("#train-steps", "4")
    page.click("#train-go")
    page.wait_for_function("!document.querySelector('#train-done').hidden", timeout=120_000)
    assert "<lora:my-disc:0.8>" in page.inner_text("#train-done")
    request = last_job(server)
    assert request["mode"] == "train_lora" and len(request["pictures"]) == 10 and request["sample_every"] == 1
    # The results come through the job's own event stream, which may arrive just after the "done" box's.
    page.wait_for_function("document.querySelectorAll('#train-results .card').length > 0", timeout=30_000)
    assert page.eval_on_selector_all("#train-results .card", "cards => cards.length") == 1  # the last samples

    page.click("nav [data-view='create']")
    page.click("#lora-picker summary")
    page.wait_for_selector("#lora-list button[data-lora='my-disc']", timeout=60_000)
    assert "yours" in page.inner_text("#lora-list .network:has([data-lora='my-disc'])")
