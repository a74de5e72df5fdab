"""Screenshots of the studio for the README: docs/studio.png (desktop), docs/studio-phone.png and
docs/studio-video.png (the Video view playing a walk).

Starts a studio on a free port with the built-in model, makes four pictures through the page in
Debian's headless chromium, and captures the page.

    .venv/bin/python docs/make_screenshots.py
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(ServerConfig(data_dir=tempfile.mkdtemp(prefix="studio-shots-"), device="cpu"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for name, viewport in (("studio", {"width": 1200, "height": 820}), ("studio-phone", {"width": 390, "height": 844})):
            page = browser.new_page(viewport=viewport)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelector('#style').options.length > 0")
            page.fill("#prompt", "red apple")
            page.select_option("#style", "Noto emoji")
            page.press("#prompt", "Enter")
            page.wait_for_function("document.querySelectorAll('#results .card img').length === 4 && "
                                   "[...document.querySelectorAll('#results .card img')].every(i => i.complete) && "
                                   "document.querySelector('#job').hidden", timeout=120_000)
            page.screenshot(path=f"docs/{name}.png")
            print(f"wrote docs/{name}.png")
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("button.tab[data-view=video]")
        page.fill("#video-prompts", "a red apple\na green frog")
        page.fill("#video-frames", "12")
        page.fill("#video-seeds", "1,7")
        page.click("#video-go")
        page.wait_for_function("(() => { const v = document.querySelector('#video-result video'); "
                               "return v && v.readyState >= 2; })()", timeout=300_000)
        page.evaluate("new Promise((done) => { const v = document.querySelector('#video-result video'); v.pause(); "
                      "v.addEventListener('seeked', done, { once: true }); v.currentTime = v.duration / 2; })")
        page.wait_for_timeout(300)
        page.screenshot(path="docs/studio-video.png")
        print("wrote docs/studio-video.png")
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
