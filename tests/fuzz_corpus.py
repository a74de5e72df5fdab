"""The fuzz test's corpus: requests every API must refuse with a 4xx in the documented shape,
before anything is queued or charged (tests/test_server_fuzz.py sends them).

A case is a dict: `name`, `method`, `path`, and one of
- `json`: a Python value sent as JSON (Python's json writes NaN and Infinity, as a careless
  client would); strings "<b64:NAME>" inside it become the base64 of the generated file NAME;
- `raw`: bytes sent as they are, with `content_type`;
- `form` (text fields) and `files` ({field: NAME}): a multipart upload of generated files.
The pictures are made in code (`FILES`), none is committed.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from functools import cache

from PIL import Image

NAN, INF = float("nan"), float("inf")
MIB = 2**20
PATHS = ["/etc/passwd", "../../gallery.sqlite", "file:///etc/passwd", "image:../../gallery.sqlite", "~/.ssh/id_rsa",
         "\\\\server\\share\\x.png", "/proc/self/environ"]


# -- generated files ----------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def bomb_png(width: int, height: int) -> bytes:
    """A real decompression bomb: a valid grey PNG of width x height zeros, compressed ~1000:1
    (12000 x 12000 is 144 MB of pixels in about 140 KB), made row by row."""
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def picture_bytes(size=(64, 64), mode: str = "RGB", fmt: str = "PNG", colour=120) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


FILES = {
    "png": lambda: picture_bytes(),
    "png_rgba": lambda: picture_bytes(mode="RGBA", colour=(200, 30, 30, 0)),
    "mask_other_size": lambda: picture_bytes((32, 32), "L", colour=255),
    "claims_12000": lambda: png_claiming(12000, 12000),
    "claims_20000": lambda: png_claiming(20000, 20000),
    "claims_huge_width": lambda: png_claiming(2**31 - 1, 1),
    "bomb_12000": lambda: bomb_png(12000, 12000),
    "truncated": lambda: picture_bytes()[:60],
    "garbage": lambda: b"this is not a picture at all" * 10,
    "empty": lambda: b"",
    "gif": lambda: picture_bytes(mode="P", fmt="GIF"),  # a picture, but not a format uploads take
    "bmp": lambda: picture_bytes(fmt="BMP"),
    "svg": lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///etc/passwd"/></svg>',
}


@cache
def file(name: str) -> bytes:
    return FILES[name]()


def b64(name: str) -> str:
    return base64.b64encode(file(name)).decode()


def materialize(value):
    """`value` with every "<b64:NAME>" replaced by that file's base64."""
    if isinstance(value, str) and value.startswith("<b64:") and value.endswith(">"):
        return b64(value[5:-1])
    if isinstance(value, dict):
        return {key: materialize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [materialize(item) for item in value]
    return value


# -- the cases ----------------------------------------------------------------------------------
FAST = {"steps": 2, "width": 64, "height": 64}
BAD_IMAGES = ["claims_12000", "claims_20000", "claims_huge_width", "bomb_12000", "truncated", "garbage", "gif", "bmp", "svg"]


def _json(name, path, body, method="POST"):
    return {"name": name, "method": method, "path": path, "json": body}


def _raw(name, path, raw: bytes, content_type="application/json", method="POST"):
    return {"name": name, "method": method, "path": path, "raw": raw, "content_type": content_type}


def _form(name, path, form: dict, files: dict):
    return {"name": name, "method": "POST", "path": path, "form": form, "files": files}


NATIVE = "/api/v1/jobs"
DREAMS = "/api/v1/dreams"
TXT2IMG, IMG2IMG, OPTIONS = "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options"
GENERATIONS, EDITS, VARIATIONS = "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"

CASES = [
    # wrong types
    *[_json(f"native {field}={value!r}", NATIVE, {"prompt": "x", **FAST, field: value}) for field, value in [
        ("prompt", 5), ("prompt", ["a"]), ("prompt", {"a": 1}), ("width", "wide"), ("steps", 2.5), ("seed", "abc"),
        ("cfg_scale", "high"), ("mode", 5), ("mode", "nope"), ("style", ["a"]), ("upscale", 3), ("n_samples", [1]),
        ("mask_mode", "grey"), ("score", "maybe"), ("init_image", 7)]],
    _json("native body is a list", NATIVE, [{"prompt": "x"}]),
    _json("native body is a string", NATIVE, "prompt"),
    _json("native body is null", NATIVE, None),
    _json("dream body is empty", DREAMS, {}),
    *[_json(f"dream {field}={value!r}", DREAMS, {"prompt": "x", field: value}) for field, value in [
        ("cutouts", "many"), ("lr", -1), ("lr", 1e9), ("iterations", 10**9), ("width", 10**9), ("upscale", 3),
        ("generator", "/etc/passwd"), ("generator", "biggan:/tmp"), ("prior", "../../x"), ("save_every", -5)]],
    *[_json(f"a1111 {field}={value!r}", TXT2IMG, {"prompt": "x", **FAST, field: value}) for field, value in [
        ("batch_size", 0), ("batch_size", 10**9), ("n_iter", 10**9), ("width", -64), ("steps", 10**9), ("cfg_scale", "x"),
        ("seed", 2**70), ("styles", "not a list"), ("styles", ["a", "b"]), ("styles", ["No such look"]), ("sampler_name", "nope"),
        ("override_settings", []), ("override_settings", {"sd_model_checkpoint": "/etc/passwd"}),
        ("override_settings", {"sd_model_checkpoint": "../../gallery.sqlite"}), ("override_settings", {"sd_model_checkpoint": 5})]],
    _json("a1111 img2img body is empty", IMG2IMG, {}),
    _json("a1111 img2img no pictures", IMG2IMG, {"prompt": "x", "init_images": []}),
    _json("a1111 img2img a number for a picture", IMG2IMG, {"prompt": "x", "init_images": [12345]}),
    _json("a1111 img2img strength 5", IMG2IMG, {"prompt": "x", **FAST, "init_images": ["<b64:png>"], "denoising_strength": 5}),
    _json("a1111 options model path", OPTIONS, {"sd_model_checkpoint": "/etc/passwd"}),
    _json("a1111 options body is a list", OPTIONS, []),
    _json("openai empty prompt", GENERATIONS, {"prompt": ""}),
    _json("openai no prompt", GENERATIONS, {}),
    *[_json(f"openai {field}={value!r}", GENERATIONS, {"prompt": "x", "size": "64x64", field: value}) for field, value in [
        ("n", 0), ("n", 10**9), ("n", 9), ("size", "100000x100000"), ("size", 5), ("response_format", "file"),
        ("model", "/etc/passwd"), ("n", "two")]],
    # NaN and Infinity, anywhere in the body, in fields reverie reads or ignores
    _json("native NaN cfg_scale", NATIVE, {"prompt": "x", **FAST, "cfg_scale": NAN}),
    _json("native Infinity steps", NATIVE, {"prompt": "x", **FAST, "steps": INF}),
    _json("native -Infinity seed", NATIVE, {"prompt": "x", **FAST, "seed": -INF}),
    _json("dream NaN lr", DREAMS, {"prompt": "x", "lr": NAN}),
    _json("dream Infinity prior_weight", DREAMS, {"prompt": "x", "prior_weight": INF}),
    _json("a1111 NaN restore_faces", TXT2IMG, {"prompt": "x", **FAST, "restore_faces": NAN}),
    _json("a1111 Infinity in override_settings", TXT2IMG, {"prompt": "x", **FAST, "override_settings": {"CLIP_stop_at_last_layers": INF}}),
    _json("a1111 NaN deep in an ignored field", TXT2IMG, {"prompt": "x", **FAST, "alwayson_scripts": {"a": {"args": [1, [NAN]]}}}),
    _json("a1111 img2img NaN strength", IMG2IMG, {"prompt": "x", **FAST, "init_images": ["<b64:png>"], "denoising_strength": NAN}),
    _json("a1111 options NaN", OPTIONS, {"sd_model_checkpoint": "mini", "CLIP_stop_at_last_layers": NAN}),
    _json("openai NaN in an ignored field", GENERATIONS, {"prompt": "x", "size": "64x64", "quality": NAN}),
    _raw("a1111 1e999 overflows to Infinity", TXT2IMG, b'{"prompt": "x", "steps": 2, "width": 64, "height": 64, "cfg_scale": 1e999}'),
    _raw("native a 5000-digit seed", NATIVE, b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}"),
    # huge numbers
    *[_json(f"native huge {field}", NATIVE, {"prompt": "x", **FAST, field: value}) for field, value in [
        ("width", 10**30), ("seed", 2**64), ("steps", 10**9), ("n_samples", 10**6), ("cfg_scale", 1e308), ("rerank", 10**9),
        ("mask_blur", 10**9)]],
    _json("native huge outpaint", NATIVE, {"prompt": "x", "mode": "outpaint", "init_image": "<b64:png>", "outpaint_left": 10**12}),
    # huge strings
    _json("native 1 MiB prompt", NATIVE, {"prompt": "x" * MIB, **FAST}),
    _json("native 1 MiB negative prompt", NATIVE, {"prompt": "x", "negative_prompt": "y" * MIB, **FAST}),
    _json("a1111 1 MiB prompt", TXT2IMG, {"prompt": "x" * MIB, **FAST}),
    _json("a1111 1 MiB negative prompt", TXT2IMG, {"prompt": "x", "negative_prompt": "y" * MIB, **FAST}),
    _json("openai 1 MiB prompt", GENERATIONS, {"prompt": "x" * MIB, "size": "64x64"}),
    _json("dream 1 MiB prompt", DREAMS, {"prompt": "x" * MIB}),
    _json("native huge sampler name", NATIVE, {"prompt": "x", **FAST, "sampler": "s" * 100_000}),
    _json("native huge model name", NATIVE, {"prompt": "x", **FAST, "model": "m" * 100_000}),
    _json("native huge style name", NATIVE, {"prompt": "x", **FAST, "styles": ["s" * 100_000]}),
    _json("native huge mode name", NATIVE, {"prompt": "x", **FAST, "mode": "z" * 100_000}),
    _raw("a body past the limit", NATIVE, b'{"prompt": "' + b"x" * (60 * MIB) + b'"}'),
    # pictures: garbage, bombs, headers claiming huge sizes, formats uploads do not take
    *[_json(f"native init_image {bad}", NATIVE, {"prompt": "x", "mode": "img2img", "init_image": f"<b64:{bad}>"}) for bad in BAD_IMAGES],
    *[_json(f"native mask_image {bad}", NATIVE, {"prompt": "x", "mode": "inpaint", "init_image": "<b64:png>",
                                                 "mask_image": f"<b64:{bad}>"}) for bad in BAD_IMAGES + ["mask_other_size"]],
    _json("native init_image not base64", NATIVE, {"prompt": "x", "mode": "img2img", "init_image": "%%%% not base64 %%%%"}),
    _json("dream init_image bomb", DREAMS, {"prompt": "x", "init_image": "<b64:bomb_12000>"}),
    *[_json(f"a1111 init_images {bad}", IMG2IMG, {"prompt": "x", **FAST, "init_images": [f"<b64:{bad}>"]}) for bad in BAD_IMAGES],
    *[_json(f"a1111 mask {bad}", IMG2IMG, {"prompt": "x", **FAST, "init_images": ["<b64:png>"], "mask": f"<b64:{bad}>"})
      for bad in BAD_IMAGES + ["mask_other_size"]],
    *[_form(f"openai edits image {bad}", EDITS, {"prompt": "x", "size": "64x64"}, {"image": bad}) for bad in BAD_IMAGES + ["empty"]],
    *[_form(f"openai edits mask {bad}", EDITS, {"prompt": "x", "size": "64x64"}, {"image": "png_rgba", "mask": bad})
      for bad in BAD_IMAGES + ["empty", "mask_other_size"]],
    *[_form(f"openai variations image {bad}", VARIATIONS, {"size": "64x64"}, {"image": bad}) for bad in BAD_IMAGES + ["empty"]],
    _form("openai edits no prompt", EDITS, {"size": "64x64"}, {"image": "png_rgba"}),
    _form("openai edits n is not a number", EDITS, {"prompt": "x", "n": "NaN"}, {"image": "png_rgba"}),
    _form("openai edits huge prompt", EDITS, {"prompt": "x" * 5000}, {"image": "png_rgba"}),
    _form("openai edits bad size", EDITS, {"prompt": "x", "size": "1x1"}, {"image": "png_rgba"}),
    _form("openai variations n Infinity", VARIATIONS, {"n": "Infinity"}, {"image": "png"}),
    # path strings where a picture goes: never read from the server's disk
    *[_json(f"native init_image {path!r}", NATIVE, {"prompt": "x", "mode": "img2img", "init_image": path}) for path in PATHS],
    *[_json(f"native mask_image {path!r}", NATIVE, {"prompt": "x", "mode": "inpaint", "init_image": "<b64:png>", "mask_image": path})
      for path in PATHS],
    *[_json(f"a1111 init_images {path!r}", IMG2IMG, {"prompt": "x", **FAST, "init_images": [path]}) for path in PATHS],
    *[_json(f"a1111 mask {path!r}", IMG2IMG, {"prompt": "x", **FAST, "init_images": ["<b64:png>"], "mask": path}) for path in PATHS],
    *[_json(f"dream init_image {path!r}", DREAMS, {"prompt": "x", "init_image": path}) for path in PATHS],
    _json("native scorer path", NATIVE, {"prompt": "x", **FAST, "scorer": "/etc/passwd"}),
    # unknown fields (the native API refuses them; A1111 and OpenAI accept and ignore plain ones)
    _json("native unknown field", NATIVE, {"prompt": "x", **FAST, "colour": "red"}),
    _json("native dunder field", NATIVE, {"prompt": "x", **FAST, "__class__": {}}),
    _json("native huge unknown field name", NATIVE, {"prompt": "x", **FAST, "k" * MIB: 1}),
    _json("a1111 huge model name in override_settings", TXT2IMG, {"prompt": "x", **FAST, "override_settings": {"sd_model_checkpoint": "m" * MIB}}),
    _json("dream unknown field", DREAMS, {"prompt": "x", "image_prompts": ["/etc/passwd"]}),
    # empty, malformed, or not JSON at all
    _raw("native no body", NATIVE, b""),
    _raw("a1111 no body", TXT2IMG, b""),
    _raw("openai no body", GENERATIONS, b""),
    _raw("native malformed", NATIVE, b"{nope"),
    _raw("native trailing comma", NATIVE, b'{"prompt": "x",}'),
    _raw("native truncated", NATIVE, b'{"prompt": "x", "steps": '),
    _raw("native deep nesting", NATIVE, b"[" * 100_000 + b"]" * 100_000),
    _raw("native invalid utf-8", NATIVE, b'{"prompt": "\xff\xfe"}'),
    _raw("native text/plain", NATIVE, b'{"prompt": "x"}', "text/plain"),
    _raw("native form-encoded", NATIVE, b"prompt=x", "application/x-www-form-urlencoded"),
    _raw("native no content type", NATIVE, b'{"prompt": "x"}', ""),
    _raw("a1111 text/plain", TXT2IMG, b'{"prompt": "x"}', "text/plain"),
    _raw("openai edits sent as JSON", EDITS, b'{"prompt": "x"}'),
    _raw("openai edits broken multipart", EDITS, b"--xx\r\ngarbage", "multipart/form-data; boundary=xx"),
    _raw("openai edits multipart without boundary", EDITS, b"garbage", "multipart/form-data"),
    # routes and methods that do not exist
    _raw("unknown route", "/nope", b"", method="GET"),
    _raw("unknown API route", "/api/v1/nope", b"{}", method="POST"),
    _raw("a method a route does not take", NATIVE, b"", method="PUT"),
    _raw("DELETE txt2img", TXT2IMG, b"", method="DELETE"),
    _raw("a job id that is a path", "/api/v1/jobs/..%2F..%2Fgallery.sqlite", b"", method="GET"),
    _raw("an image id that is a path", "/api/v1/images/%2e%2e%2fsecret.key", b"", method="GET"),
    _raw("a file link that is a path", "/files/..%2Fgallery.sqlite.png?sig=0", b"", method="GET"),
]
