"""The studio page in a real headless Chromium against a Celery deployment (issue 21): a front end
started with `--broker` (and PostgreSQL), a `reverie worker` beside it. A user types a prompt on
the page and sees the job's progress, its live preview and its pictures, all of which came from the
worker over Redis. Chromium and Playwright as in test_studio_browser.py.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    pytest.skip("no chromium here (make test installs it)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")

from test_jobs_celery import FrontEnd, Worker, broker, files_match_rows, shared  # noqa: E402,F401
from test_studio_browser import CHROMIUM_ARGS, card_ids, wait_for_new_cards  # noqa: E402

# Every text the job's status line shows and every preview the page loads, as they come.
WATCH = """() => {
  window.seenStatus = []; window.seenPreviews = [];
  new MutationObserver(() => window.seenStatus.push(document.querySelector('#job-status').textContent))
    .observe(document.querySelector('#job-status'), {childList: true, characterData: true, subtree: true});
  new MutationObserver(() => window.seenPreviews.push(document.querySelector('#preview').getAttribute('src')))
    .observe(document.querySelector('#preview'), {attributes: true, attributeFilter: ['src']});
}"""


def test_the_studio_page_makes_pictures_through_a_celery_front_end(shared):
    Worker(shared, "a")
    front = FrontEnd(shared)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(front.url + "/")
            page.wait_for_function("document.querySelector('#sampler').options.length > 0")
            page.evaluate(WATCH)
            page.click("#advanced summary")  # the advanced panel starts collapsed
            page.fill("#steps", "10")  # enough steps for the progress to be seen on its way
            page.fill("#prompt", "a lighthouse made by a worker")
            page.press("#prompt", "Enter")
            cards = wait_for_new_cards(page, set())
            assert len(cards) == 4 and card_ids(page) == set(cards)
            seen = page.evaluate("window.seenStatus")
            previews = page.evaluate("window.seenPreviews")
            assert errors == [], errors
        finally:
            browser.close()

    # Progress as the worker published it: denoising with its step count, and its live previews.
    assert any("denoising" in text and "/10" in text for text in seen), seen
    assert any("/preview.png" in (src or "") for src in previews), previews
    rows = shared.rows("SELECT id FROM images")
    assert sorted(row[0] for row in rows) == sorted(cards)  # the page shows the gallery's pictures
    assert shared.rows("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 1)]
    files_match_rows(shared)
