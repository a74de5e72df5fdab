"""The style presets (prompts/styles.json): Dream's and Fooocus's looks, each loading, changing the picture, with a preview."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reverie.prompts.styles import PREVIEWS_DIR, StyleFileError, apply_styles, load_styles, parse_styles
from reverie.studio import make_request
from reverie.training.data.style_filters import FILTERS

ORIGINAL_TEN = ("None", "Noto emoji", "Twemoji", "Fluent flat", "Line icon", "Photograph", "Oil painting",
                "Watercolour", "Pixel art", "Ink sketch")
DREAM = ("Dark Fantasy", "Steampunk", "Mystical", "Baroque", "Cyberpunk", "Synthwave", "Vibrant", "HDR", "Psychic",
         "Ukiyo-e", "Pastel", "Rose Gold")


def test_at_least_forty_presets_with_the_old_ten_and_dreams_names():
    names = [s.name for s in load_styles()]
    assert len(names) >= 40
    assert len({n.lower() for n in names}) == len(names)
    for name in ORIGINAL_TEN + DREAM:
        assert name in names


def test_every_preset_has_the_prompt_slot_and_a_preview_picture():
    for style in load_styles():
        assert style.prompt.count("{prompt}") == 1, style.name
        assert style.preview and (PREVIEWS_DIR / style.preview).is_file(), style.name


def test_every_learned_look_is_reachable_by_some_preset():
    """The words the style filters taught reverie-mini come right after the user's prompt in some preset."""
    templates = [s.prompt for s in load_styles()]
    for look in FILTERS:
        assert any(t.startswith("{prompt}, " + look.words) for t in templates), look.words


def test_a_preset_fills_the_template_and_adds_negatives():
    prompt, negative = apply_styles(["Pixel art"], "a red apple", "text")
    assert prompt.startswith("a red apple, pixel art")
    assert negative.startswith("text, ")


@pytest.mark.parametrize("document, message", [
    ([], 'a "styles" list'),
    ({"styles": [{"name": "A", "prompt": "no slot"}]}, "must contain {prompt}"),
    ({"styles": [{"name": "", "prompt": "{prompt}"}]}, '"name" must be a non-empty string'),
    ({"styles": [{"name": "A", "prompt": "{prompt}"}, {"name": "a", "prompt": "{prompt}, b"}]}, "used twice"),
    ({"styles": [{"name": "A", "prompt": "{prompt}", "colour": 1}]}, "unknown field(s) colour"),
    ({"styles": [{"name": "A", "prompt": "{prompt}", "settings": {"width": 512}}]}, "setting 'width'"),
    ({"styles": [{"name": "A", "prompt": "{prompt}", "settings": {"steps": "ten"}}]}, "wrong type"),
    ({"styles": [{"name": "A", "prompt": "{prompt}", "preview": "../x.png"}]}, "file name"),
])
def test_schema_errors_name_the_entry_and_field(document, message):
    with pytest.raises(StyleFileError) as caught:
        parse_styles(document, "my-styles.json")
    assert message in str(caught.value) and "my-styles.json" in str(caught.value)
    if isinstance(document, dict) and document["styles"][0].get("name") == "A":
        assert "'A'" in str(caught.value) or "'a'" in str(caught.value)


def test_the_shipped_file_parses_as_written():
    from reverie.prompts.styles import STYLES_FILE

    assert len(parse_styles(json.loads(STYLES_FILE.read_text(encoding="utf-8")))) == len(load_styles())


def test_every_preset_changes_the_picture(studio):
    """On the built-in model at tiny settings: the styled picture differs from the plain one (one seed)."""
    def picture(style_name):
        prompt, negative = apply_styles([style_name], "a cat face")
        result = studio.generate(make_request(prompt=prompt, negative_prompt=negative, seed=11, steps=3, n_samples=1, upscale=1))
        return np.asarray(result.images[0].image.convert("RGB"), dtype=np.float32)

    plain = picture("None")
    for style in load_styles():
        if style.name == "None":
            continue
        difference = np.abs(picture(style.name) - plain).mean()
        assert difference > 2.0, (style.name, difference)


def test_the_studio_lists_presets_with_preview_links_it_serves(tmp_path):
    from fastapi.testclient import TestClient

    from reverie.server.app import create_app
    from reverie.server.config import ServerConfig

    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu", start_worker=False)
    with TestClient(create_app(config)) as client:
        listed = client.get("/api/v1/styles").json()
        assert len(listed) == len(load_styles())
        pixel = next(s for s in listed if s["name"] == "Pixel art")
        assert pixel["preview"] == "/style-previews/pixel-art.webp" and pixel["settings"] == {}
        answer = client.get(pixel["preview"])
        assert answer.status_code == 200 and answer.content[:4] == b"RIFF" and answer.content[8:12] == b"WEBP"
        assert client.get("/style-previews/../styles.json").status_code == 404
    page = (Path(__file__).parents[1] / "src/reverie/server/static/index.html").read_text()
    assert "/static/styles.js" in page
