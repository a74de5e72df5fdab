"""The studio page's Video view in a real headless Chromium (the fixtures of test_studio_browser):
a small walk is made from the form and plays; its gallery card shows the poster and opens the video."""

from __future__ import annotations

from pathlib import Path

from test_studio_browser import browser, last_job, page, server  # noqa: F401  (fixtures)

PLAYING = "v => v.readyState >= 2 && v.duration > 0"


def make_walk(page, format_: str) -> None:
    page.click(".tab[data-view=video]")
    page.select_option("#video-motion", "walk")
    page.fill("#video-prompts", "a forest at dawn\na city at night")
    page.fill("#video-frames", "3")
    page.select_option("#video-format", format_)
    page.click("#video-advanced summary")
    page.fill("#video-steps", "2")
    page.fill("#video-width", "64")
    page.fill("#video-height", "64")
    page.click("#video-go")


def test_the_video_view_makes_a_walk_that_plays(page, server, tmp_path):  # noqa: F811
    make_walk(page, "mp4")
    page.wait_for_selector("#video-result video", timeout=120_000)
    page.wait_for_function(f"({PLAYING})(document.querySelector('#video-result video'))", timeout=30_000)
    request = last_job(server)
    assert request["mode"] == "video" and request["motion"] == "walk" and request["frames"] == 3
    assert request["prompts"] == ["a forest at dawn", "a city at night"] and request["formats"] == ["mp4"]
    # The gallery's card shows the poster with a play badge and opens the video.
    page.click(".tab[data-view=gallery]")
    page.wait_for_selector("#gallery .card.video .play")
    page.click("#gallery .card.video img")
    page.wait_for_function(f"({PLAYING})(document.querySelector('#details-video video'))", timeout=30_000)
    assert page.eval_on_selector("#details-actions", "bar => bar.querySelectorAll('[data-action]').length") == 0
    # Its Restyle button sets the Video view to paint it again.
    walk = last_job(server)
    page.keyboard.press("Escape")
    page.locator("#gallery .card.video").first.get_by_role("button", name="Restyle").click()
    page.wait_for_selector("#view-video:not([hidden])")
    assert page.input_value("#video-motion") == "restyle"
    page.fill("#video-prompts", "0: an oil painting")
    page.fill("#video-restyle-strength", "0:(0.5)")
    page.fill("#video-coherence", "0:(0.2)")
    walk_src = page.eval_on_selector("#video-result video", "v => v.src")
    page.click("#video-go")
    page.wait_for_function("old => { const v = document.querySelector('#video-result video'); return v && v.src !== old; }",
                           arg=walk_src, timeout=120_000)
    request = last_job(server)
    assert walk["motion"] == "walk" and request["motion"] == "restyle" and request["prompts"] == ["0: an oil painting"]
    assert (request["strength"], request["coherence"], request["frames"]) == ("0:(0.5)", "0:(0.2)", 3)
    assert request["video_input"].endswith(".mp4") and request["fps"] == walk["fps"]  # the input's own rate
    # Or an uploaded video.
    from test_video_restyle import ball_video

    page.set_input_files("#video-upload", str(ball_video(tmp_path / "ball.mp4", frames=2)))
    page.wait_for_function("document.querySelector('#video-input-name').textContent.includes('ball.mp4')")
    restyled_src = page.eval_on_selector("#video-result video", "v => v.src")
    page.click("#video-go")
    page.wait_for_function("old => { const v = document.querySelector('#video-result video'); return v && v.src !== old; }",
                           arg=restyled_src, timeout=120_000)
    uploaded = last_job(server)
    assert Path(uploaded["video_input"]).parent.name == "uploads" and uploaded["frames"] == 2


def test_a_gif_video_is_shown_as_a_picture(page, server):  # noqa: F811
    make_walk(page, "gif")
    page.wait_for_function("(() => { const img = document.querySelector('#video-result img');"
                           " return img && img.complete && img.naturalWidth === 64; })()", timeout=120_000)
    assert last_job(server)["formats"] == ["gif"]


def test_an_animation_from_the_form_sends_its_camera_and_deforum_settings(page, server):  # noqa: F811
    page.click(".tab[data-view=video]")
    page.select_option("#video-motion", "animate")
    page.fill("#video-prompts", "0: a forest | 2: a city")
    page.fill("#video-frames", "3")
    page.fill("#video-zoom", "0:(1.05)")
    page.fill("#video-noise", "0:(0.01)")
    page.fill("#video-cfg", "0:(4), 2:(6)")
    page.select_option("#video-seed-behavior", "fixed")
    page.select_option("#video-border", "wrap")
    page.check("#video-prompt-cut")
    page.click("#video-advanced summary")
    page.fill("#video-steps", "2")
    page.fill("#video-width", "64")
    page.fill("#video-height", "64")
    page.click("#video-go")
    page.wait_for_selector("#video-result video", timeout=120_000)
    request = last_job(server)
    assert request["motion"] == "animate" and request["prompts"] == ["0: a forest | 2: a city"]
    assert (request["zoom"], request["noise"], request["cfg"]) == ("0:(1.05)", "0:(0.01)", "0:(4), 2:(6)")
    assert (request["seed_behavior"], request["border"], request["prompt_blend"]) == ("fixed", "wrap", False)
