"""The studio page in a real headless Chromium (Debian's), driven by Playwright.

A user types a prompt and gets four pictures, opens variations, paints a mask and inpaints,
drags an edge out to outpaint, upscales and pans with Midjourney's buttons, finds a picture in the gallery and deletes it; on a phone-sized
screen, with the keyboard alone.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    pytest.skip("no chromium here (make test installs it)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """`app` on uvicorn in a thread of this process, on a free port: its URL, until the block ends."""
    import uvicorn

    port = _free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    data = tmp_path_factory.mktemp("studio")
    app = create_app(ServerConfig(data_dir=data, default_model="tiny-random", device="cpu"))
    with serving(app) as url:
        yield url, app, data


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server[0] + "/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 0")
    yield page
    context.close()
    assert errors == [], errors


def generate(page, prompt: str) -> list[str]:
    if not page.evaluate("document.querySelector('#advanced').open"):
        page.click("#advanced summary")  # the advanced panel starts collapsed
    page.fill("#steps", "2")
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    return wait_for_new_cards(page, set())


def card_ids(page) -> set[str]:
    return set(page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.imageId)"))


def wait_for_new_cards(page, old: set[str], count: int = 4) -> list[str]:
    page.wait_for_function(
        "([old, count]) => { const ids = [...document.querySelectorAll('#results .card')].map(c => c.dataset.imageId);"
        " return ids.length === count && ids.every(id => !old.includes(id)); }",
        arg=[sorted(old), count], timeout=120_000)
    page.wait_for_function("[...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)")
    return sorted(card_ids(page))


def last_job(server) -> dict:
    _, app, _ = server
    gallery = app.state.studio.gallery
    job = gallery.jobs(gallery.local_user().id, 1)[0]
    return json.loads(job.request_json)


def test_prompt_gives_four_pictures_then_variations(page, server):
    first = generate(page, "a lighthouse at dusk")
    assert len(first) == 4
    page.locator("#results .card").first.get_by_role("button", name="Variations").click()
    second = wait_for_new_cards(page, set(first))
    assert len(second) == 4 and not set(second) & set(first)
    assert last_job(server)["mode"] == "variations"


def test_speed_choices_reach_the_job_carry_into_variations_and_a_refusal_is_shown(page, server):
    page.click("#speed summary")
    page.select_option("#step_cache", "2")
    page.select_option("#runtime", "torch")
    first = generate(page, "a lighthouse at dusk")
    made = last_job(server)
    assert (made["step_cache"], made["runtime"], made["quantize"], made["decoder"]) == (2, "torch", "none", "vae")
    page.locator("#results .card").first.get_by_role("button", name="Variations").click()
    wait_for_new_cards(page, set(first))
    varied = last_job(server)
    assert varied["mode"] == "variations" and varied["step_cache"] == 2  # made the way the picture was
    page.select_option("#quantize", "int8")  # int8 runs on OpenVINO's bundle, never on torch: refused, not queued
    page.fill("#prompt", "a lighthouse at noon")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelector('#toast').textContent.includes('leave quantize out')",
                           timeout=60_000)
    assert last_job(server)["mode"] == "variations"


def test_a_gan_in_the_models_folder_draws_from_the_create_view(page, server, tmp_path, monkeypatch):
    from test_gan import strong_gan

    from reverie.models.gan import save_gan

    save_gan(strong_gan(0), tmp_path / "models" / "my-gan")
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    page.reload()
    page.wait_for_function("[...document.querySelector('#model').options].some(o => o.value === 'my-gan')")
    page.click("#advanced summary")  # the model menu is in the advanced panel, collapsed at first
    page.select_option("#model", "my-gan")
    page.fill("#seed", "5")
    assert len(generate(page, "red")) == 4
    request = last_job(server)
    assert (request["mode"], request["model"], request["class_name"], request["seed"]) == ("gan", "my-gan", "red", 5)
    # A GAN has no edit modes: its picture's variations are made by the default diffusion model.
    before = card_ids(page)
    page.locator("#results .card").first.get_by_role("button", name="Variations").click()
    wait_for_new_cards(page, before)
    assert last_job(server)["mode"] == "variations" and last_job(server)["model"] == "tiny-random"
    page.select_option("#model", "")


def test_paint_a_mask_and_inpaint(page, server):
    generate(page, "a house with a door")
    page.locator("#results .card").first.get_by_role("button", name="Inpaint").click()
    canvas = page.locator("#inpaint-canvas")
    page.wait_for_function("document.querySelector('#inpaint-canvas').width > 0")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("#inpaint-prompt", "a red door")
    before = card_ids(page)
    with page.expect_request(lambda sent: sent.url.endswith("/api/v1/jobs") and sent.method == "POST") as posted:
        page.click("#inpaint-go")
    wait_for_new_cards(page, before)
    request = last_job(server)
    assert request["mode"] == "inpaint" and request["prompt"] == "a red door"
    # The upload goes when its job is marked finished, a moment after its pictures show.
    deadline = time.monotonic() + 30
    while Path(request["mask_image"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(request["mask_image"]).exists()
    painted = json.loads(posted.value.post_data)["mask_image"].partition(",")[2]  # the page's data URL
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(painted))).convert("L"))
    # The stroke went across the middle, left to right; the top rows stay unpainted.
    assert mask[mask.shape[0] // 2, mask.shape[1] // 2] == 255 and mask[: mask.shape[0] // 5].max() == 0


def test_drag_an_edge_out_to_outpaint(page, server):
    generate(page, "a beach")
    page.locator("#results .card").first.get_by_role("button", name="Outpaint").click()
    handle = page.locator('.handle[data-side="right"]')
    box = handle.bounding_box()
    page.mouse.move(box["x"] + 4, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + 120, box["y"] + 10, steps=6)
    page.mouse.up()
    extension = int(page.input_value("#out-right"))
    assert extension > 0 and extension % 8 == 0
    before = card_ids(page)
    page.click("#outpaint-go")
    wait_for_new_cards(page, before)
    request = last_job(server)
    assert request["mode"] == "outpaint" and request["outpaint_right"] == extension
    width = page.eval_on_selector("#results .card img", "img => img.naturalWidth")
    assert width >= 64 + extension


def test_midjourney_actions_on_a_picture(page, server):
    first = generate(page, "a red kite")
    card = page.locator("#results .card").first
    width = card.locator("img").evaluate("img => img.naturalWidth")
    card.get_by_role("button", name="Upscale").click()  # U
    [big] = wait_for_new_cards(page, set(first), count=1)
    assert page.eval_on_selector("#results .card img", "img => img.naturalWidth") == 2 * width
    assert last_job(server)["mode"] == "upscale"
    # Keyboard alone: Tab to "Pan right" on the upscaled picture, press Enter.
    pan = page.locator("#results .card").first.get_by_role("button", name="Pan right")
    pan.focus()
    page.keyboard.press("Enter")
    assert len(wait_for_new_cards(page, {big}, count=4)) == 4  # a new grid, as the picture's request made
    request = last_job(server)
    assert request["mode"] == "outpaint" and request["outpaint_right"] == width  # half of the doubled width
    assert request["prompt"] == "a red kite"
    assert page.eval_on_selector("#results .card img", "img => img.naturalWidth") == 3 * width


def test_find_in_the_gallery_and_delete(page, server):
    barn = generate(page, "a red barn")
    page.fill("#prompt", "a purple zeppelin")
    page.press("#prompt", "Enter")
    wait_for_new_cards(page, set(barn))
    # The tab's own listing of everything is held back until the search has answered: a late
    # answer to the older request must not replace the newer one's cards.
    everything = re.compile(r"/api/v1/gallery\?q=&")
    held = []
    page.route(everything, lambda route: held.append(route))
    page.click("button.tab[data-view=gallery]")
    page.fill("#search", "zeppelin")
    page.press("#search", "Enter")
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 4")
    assert len(held) == 1
    with page.expect_response(everything):
        held[0].continue_()
    page.unroute(everything)
    page.wait_for_timeout(300)
    prompts = page.eval_on_selector_all("#gallery .card img", "imgs => imgs.map(i => i.alt)")
    assert len(prompts) == 4 and all("zeppelin" in p for p in prompts), prompts
    target = page.locator("#gallery .card").first
    image_id = target.get_attribute("data-image-id")
    _, app, data = server
    file = app.state.studio.gallery.image_path(app.state.studio.gallery.image(image_id))
    assert file.exists()
    target.locator("img").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#details").get_by_role("button", name="Delete").click()
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 3")
    assert not file.exists()
    page.fill("#search", "zeppelin")
    page.press("#search", "Enter")
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 3")


def test_phone_screen_and_keyboard_alone(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(server[0] + "/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 0")
    # Keyboard only: tab to the prompt box, type, press Enter.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "prompt":
            break
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.evaluate("document.querySelector('#steps').value = 2")
    page.keyboard.type("a small robot")
    page.keyboard.press("Enter")
    wait_for_new_cards(page, set())
    # Nothing sticks out sideways on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    cards = page.locator("#results .card")
    assert cards.first.bounding_box()["width"] < 200  # two columns
    context.close()


def test_dream_view_shows_the_dream_as_it_goes(page, server):
    page.click("button.tab[data-view=dream]")
    page.fill("#dream-prompt", "red apple | blue:-0.5")
    page.fill("#dream-iterations", "10")
    page.press("#dream-prompt", "Enter")
    page.wait_for_function("document.querySelector('#dream-status').textContent.includes('dreaming')", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#dream-results .card img').length === 1", timeout=300_000)
    request = last_job(server)
    assert request["prompt"] == "red apple | blue:-0.5" and request["iterations"] == 10
    # Size "auto": the built-in generator dreams at its own 128 px, shown 2x larger.
    assert (request["width"], request["height"], request["upscale"]) == (128, 128, 2)


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    """A multi-user studio with one user, ann, who has never used it."""
    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path_factory.mktemp("multi"), multi_user=True,
                                  default_model="tiny-random", device="cpu"))
    app.state.studio.gallery.add_user("ann", "ann-pw")
    with serving(app) as url:
        yield url


def test_log_in_see_credits_and_their_history_then_log_out(browser, multi_server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(multi_server + "/")
    page.wait_for_selector("#login[open]")
    page.fill("#login-name", "ann")
    page.fill("#login-password", "ann-pw")
    page.press("#login-password", "Enter")
    # The first month's free credits show before anything is spent.
    page.wait_for_function("document.querySelector('#credits-button')?.textContent === '50 credits'")
    assert "reverie_session" not in page.evaluate("document.cookie")  # HttpOnly
    generate(page, "a lighthouse")  # the page's own POST passes the cross-site check
    page.wait_for_function("document.querySelector('#credits-button').textContent === '49 credits'")
    page.click("#credits-button")
    page.wait_for_selector("#credits[open]")
    assert page.text_content("#credits-balance") == "49 credits"
    assert "115 credits for" in page.text_content("#credits-packs")
    rows = page.eval_on_selector_all("#credits-history tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert [row[1] for row in rows] == ["-1", "+50"] and "first month" in rows[1][2]
    page.locator("#credits").get_by_role("button", name="Close").click()
    page.get_by_role("button", name="Log out").click()
    page.wait_for_selector("#login[open]")
    context.close()
    assert errors == [], errors


def test_style_view_restyles_an_uploaded_picture(page, server, tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([x * 4, y * 4, 255 - x * 2], -1).astype(np.uint8)).save(tmp_path / "content.png")
    Image.fromarray(np.where((((x + y) // 4) % 2 == 0)[..., None], 240, 20).repeat(3, -1).astype(np.uint8)).save(tmp_path / "style.png")
    page.click("button.tab[data-view=style]")
    page.set_input_files("#style-content", str(tmp_path / "content.png"))
    page.wait_for_function("!document.querySelector('#style-content-preview').hidden")
    page.set_input_files("#style-picture", str(tmp_path / "style.png"))
    page.select_option("#style-size", "128")
    page.fill("#style-steps", "3")
    page.check("#style-preserve")
    page.click("#style-form button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#style-results .card img').length === 1", timeout=120_000)
    request = last_job(server)
    assert request["mode"] == "style" and request["steps"] == 3 and request["size"] == 128 and request["preserve_colour"]
    # The page sent pictures, never a server path: the server stored them as uploads.
    assert len(request["style_images"]) == 1 and "uploads" in request["content_image"]
