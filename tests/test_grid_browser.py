"""The studio page's grid panel in a real headless Chromium (the fixtures of test_studio_browser)."""

from __future__ import annotations

from test_studio_browser import browser, last_job, page, server  # noqa: F401  (fixtures)


def test_grid_panel_makes_a_labelled_grid_from_the_form(page, server):  # noqa: F811
    page.click("#advanced summary")
    page.fill("#steps", "2")
    page.fill("#prompt", "a lighthouse at dusk")
    page.click("#grid-panel summary")
    page.select_option("#grid-x-axis", "cfg")
    page.fill("#grid-x-values", "1,9")
    page.select_option("#grid-y-axis", "seed")
    page.fill("#grid-y-values", "3,4")
    page.click("#grid-go")
    page.wait_for_function("!document.querySelector('#grid-result').hidden"
                           " && [...document.querySelectorAll('#grid-sheets img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=120_000)
    width = page.eval_on_selector("#grid-sheets img", "img => img.naturalWidth")
    assert width > 2 * 64  # two columns of cells and the row labels' margin
    page.wait_for_function("document.querySelectorAll('#results .card').length === 5")  # four cells and the grid
    request = last_job(server)
    assert request["mode"] == "grid" and request["x"]["values"] == ["1", "9"] and request["base"]["steps"] == 2
    assert request["base"]["n_samples"] == 1 and request["seed"] is not None
