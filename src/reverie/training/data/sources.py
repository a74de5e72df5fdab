"""The openly licensed art reverie's built-in models learn from, and how to read each source.

Every source is an npm package pinned in data/npm/package.json (`npm ci --prefix data/npm`
installs them into data/npm/node_modules). Apple and Facebook emoji art is never used: it is
not openly licensed.

A source lists `Entry`s (one per concept: what it shows, without pixels yet) and renders each
at any size; `iter_items` yields ready `Item`s. Emoji concepts are keyed by their normalized
hexcode (lowercase, FE0F dropped), so the same emoji drawn by Noto, Twemoji and Fluent is one
concept; Tabler concepts are `tabler:<icon name>`. Labels and tags of emoji come from
emojibase-data. Skin-tone variants and the Component group are always left out; flags only
on request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from PIL import Image

from ...errors import ReverieError

INSTALL_HINT = "run `npm ci --prefix data/npm` to install the pinned art packages"


class DatasetError(ReverieError):
    """The training data cannot be built or read: a package or folder is missing or wrong."""


@dataclass(frozen=True)
class Package:
    """An npm package the dataset reads, with its licence as the package states it."""

    name: str
    version: str
    license: str
    authors: str
    license_url: str
    homepage: str
    used_for: str


@dataclass(frozen=True)
class Source:
    """One art source: where its pictures come from and the style words its captions use."""

    name: str
    package: Package
    style: str  # caption style words, e.g. "Noto emoji"
    native_size: int | None  # pixel size of the shipped art; None for vector art
    kind: str  # "emoji" or "icon"

    @property
    def vector(self) -> bool:
        return self.native_size is None


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("noto", Package("emoji-datasource-google", "16.0.0", "Apache-2.0", "Google Inc. (Noto Emoji)",
                               "https://github.com/googlei18n/noto-emoji/blob/master/LICENSE",
                               "https://github.com/googlefonts/noto-emoji", "Noto Emoji art, 64 px PNGs"),
               style="Noto emoji", native_size=64, kind="emoji"),
        Source("twemoji", Package("emoji-datasource-twitter", "16.0.0", "CC-BY-4.0",
                                  "Twitter, Inc (now X Corp.) and other contributors (jdecked/twemoji)",
                                  "https://github.com/jdecked/twemoji/blob/v15.0.2/LICENSE-GRAPHICS",
                                  "https://github.com/jdecked/twemoji", "Twemoji art, 64 px PNGs"),
               style="Twemoji", native_size=64, kind="emoji"),
        Source("fluent", Package("@iconify-json/fluent-emoji-flat", "1.2.6", "MIT", "Microsoft Corporation",
                                 "https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE",
                                 "https://github.com/microsoft/fluentui-emoji", "Fluent Emoji Flat art, SVG"),
               style="flat Fluent emoji", native_size=None, kind="emoji"),
        Source("tabler", Package("@iconify-json/tabler", "1.2.41", "MIT", "Paweł Kuna",
                                 "https://github.com/tabler/tabler-icons/blob/master/LICENSE",
                                 "https://github.com/tabler/tabler-icons", "Tabler Icons outline art, SVG"),
               style="line icon", native_size=None, kind="icon"),
    )
}

# Text only: labels, tags and groups of emoji (no pictures are taken from these).
EMOJIBASE = Package("emojibase-data", "17.0.0", "MIT", "Miles Johnson", "https://github.com/milesj/emojibase/blob/master/LICENSE",
                    "https://github.com/milesj/emojibase", "emoji labels, tags and groups (text)")
EMOJI_DATA = "emoji.json"  # iamcal/emoji-data's list, inside each emoji-datasource-* package
EMOJI_DATASOURCE_NOTE = ("emoji list and file names from iamcal/emoji-data (emoji-datasource, MIT, Cal Henderson, "
                         "https://github.com/iamcal/emoji-data)")

SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
LINE_COLOUR = "#202020"  # what Tabler's stroke="currentColor" becomes

# Tabler: ~6000 icons, many near-duplicates. Kept: one picture per idea.
_TABLER_DROP_SUFFIXES = ("off", "filled", "small")  # crossed-out, solid and small versions
# "<icon>-<badge>" draws <icon> with a small badge in a corner; dropped when <icon> is itself kept.
_TABLER_BADGES = frozenset({
    "plus", "minus", "x", "check", "search", "exclamation", "heart", "dollar", "cog", "share", "star", "bolt",
    "question", "cancel", "code", "pause", "pin", "spark", "sparkle", "discount", "edit", "ai", "bitcoin", "euro",
    "pound", "percentage",
})


class Item(NamedTuple):
    """One training picture: the concept it shows, the RGB picture and its words."""

    concept_id: str
    image: Image.Image
    label: str
    tags: tuple[str, ...]
    group: str


@dataclass(frozen=True)
class Entry:
    """One concept of one source, not yet rendered: `image(size)` draws it."""

    source: str
    concept_id: str
    label: str
    tags: tuple[str, ...]
    group: str
    name: str  # file stem or icon name inside the package
    render: Callable[[int], Image.Image] = field(repr=False, compare=False)

    def image(self, size: int) -> Image.Image:
        return self.render(size)

    def item(self, size: int) -> Item:
        return Item(self.concept_id, self.image(size), self.label, self.tags, self.group)


def normalize_hexcode(hexcode: str) -> str:
    """The concept key of an emoji: lowercase code points joined by '-', without FE0F."""
    return "-".join(p for p in hexcode.lower().replace("_", "-").split("-") if p and p != "fe0f")


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def clean_words(text: str) -> str:
    """Caption-ready words: lowercase, no quotes or colons, single spaces."""
    text = text.lower()
    for mark in ("“", "”", '"', ":"):
        text = text.replace(mark, " ")
    text = text.replace("’", "'")
    return " ".join(text.split())


# ---------------------------------------------------------------- packages


def package_dir(node_modules: Path, package: Package | str) -> Path:
    """The installed package folder, or a DatasetError that says how to install it."""
    name = package.name if isinstance(package, Package) else package
    node_modules = Path(node_modules)
    if not node_modules.is_dir():
        raise DatasetError(f"npm packages folder {node_modules} not found: {INSTALL_HINT}")
    folder = node_modules / name
    if not (folder / "package.json").is_file():
        raise DatasetError(f"package {name} is not installed in {node_modules}: {INSTALL_HINT}")
    return folder


def installed_version(node_modules: Path, package: Package) -> str:
    """The installed version; a DatasetError when it is not the pinned one (counts would differ)."""
    meta = json.loads((package_dir(node_modules, package) / "package.json").read_text(encoding="utf-8"))
    version = str(meta.get("version"))
    if version != package.version:
        raise DatasetError(f"{package.name} {version} is installed in {node_modules}, reverie's dataset is pinned to "
                           f"{package.version}: {INSTALL_HINT}")
    return version


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing (damaged install?): {INSTALL_HINT}") from None


@dataclass(frozen=True)
class _EmojiText:
    label: str
    tags: tuple[str, ...]
    group: str | None


@lru_cache(maxsize=4)
def _emojibase(node_modules: Path) -> tuple[dict[str, _EmojiText], dict[str, str]]:
    """normalized hexcode -> label/tags/group, and label slug -> hexcode (to name unmapped icons)."""
    folder = package_dir(node_modules, EMOJIBASE)
    installed_version(node_modules, EMOJIBASE)
    groups = _read_json(folder / "meta" / "groups.json")["groups"]
    texts: dict[str, _EmojiText] = {}
    by_slug: dict[str, str] = {}
    for entry in _read_json(folder / "en" / "data.json"):
        for e in [entry, *(entry.get("skins") or [])]:
            key = normalize_hexcode(e["hexcode"])
            group = e.get("group", entry.get("group"))
            label = clean_words(e["label"])
            words = (clean_words(t) for t in (e.get("tags") or entry.get("tags") or ()))
            tags = tuple(dict.fromkeys(t for t in words if any(c.isalnum() for c in t)))  # not bare symbols (✓, ÷)
            texts.setdefault(key, _EmojiText(label, tags, groups.get(str(group)) if group is not None else None))
            by_slug.setdefault(slugify(e["label"]), key)
    return texts, by_slug


def _emoji_kept(hexcode: str, group: str | None, include_flags: bool) -> bool:
    if SKIN_TONES & set(hexcode.split("-")):
        return False
    if group == "component":
        return False
    return include_flags or group != "flags"


# ---------------------------------------------------------------- rendering


def on_white(image: Image.Image) -> Image.Image:
    """Composite any transparency onto white; RGB out."""
    if image.mode == "RGB":
        return image.copy()  # loaded, independent of the open file
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _png_renderer(path: Path) -> Callable[[int], Image.Image]:
    def render(size: int) -> Image.Image:
        with Image.open(path) as im:
            picture = on_white(im)
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.Resampling.LANCZOS)
        return picture

    return render


def render_svg(body: str, size: int, width: float, height: float, left: float = 0, top: float = 0,
               h_flip: bool = False, v_flip: bool = False) -> Image.Image:
    """Rasterize an Iconify icon body at size x size, padded to a square, on white."""
    try:
        import resvg_py
    except ImportError:  # pragma: no cover - the training extras are installed with the dev requirements
        raise DatasetError("rendering SVG art needs resvg_py: pip install resvg_py==0.5.0") from None
    if h_flip or v_flip:
        sx, tx = (-1, 2 * left + width) if h_flip else (1, 0)
        sy, ty = (-1, 2 * top + height) if v_flip else (1, 0)
        body = f'<g transform="translate({tx:g} {ty:g}) scale({sx} {sy})">{body}</g>'
    side = max(width, height)
    x, y = left - (side - width) / 2, top - (side - height) / 2
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{size}" '
           f'height="{size}" viewBox="{x:g} {y:g} {side:g} {side:g}">{body}</svg>')
    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, skip_system_fonts=True)
    with Image.open(BytesIO(bytes(png))) as im:
        picture = on_white(im)
    if picture.size != (size, size):  # never expected: the viewBox is square
        picture = picture.resize((size, size), Image.Resampling.LANCZOS)
    return picture


class _IconSet:
    """An @iconify-json icon set: bodies with their boxes, aliases resolved (flips included)."""

    def __init__(self, folder: Path):
        data = _read_json(folder / "icons.json")
        self.icons: dict = data["icons"]
        self.aliases: dict = data.get("aliases") or {}
        self.width = data.get("width", 16)
        self.height = data.get("height", 16)

    def visible(self, name: str) -> bool:
        entry = self.icons.get(name) or self.aliases.get(name)
        return entry is not None and not entry.get("hidden")

    def resolve(self, name: str) -> dict:
        """Body, box and flips of an icon or alias."""
        h_flip = v_flip = False
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            alias = self.aliases[name]
            h_flip ^= bool(alias.get("hFlip"))
            v_flip ^= bool(alias.get("vFlip"))
            name = alias["parent"]
        icon = self.icons[name]
        if icon.get("rotate"):
            raise DatasetError(f"icon {name} is rotated; rotation is not supported")
        h_flip ^= bool(icon.get("hFlip"))
        v_flip ^= bool(icon.get("vFlip"))
        return dict(body=icon["body"], width=icon.get("width", self.width), height=icon.get("height", self.height),
                    left=icon.get("left", 0), top=icon.get("top", 0), h_flip=h_flip, v_flip=v_flip)

    def renderer(self, name: str, colour: str | None = None) -> Callable[[int], Image.Image]:
        icon = self.resolve(name)
        if colour:
            icon["body"] = icon["body"].replace("currentColor", colour)
        return lambda size: render_svg(size=size, **icon)


# ---------------------------------------------------------------- sources


def _datasource_entries(source: Source, node_modules: Path, include_flags: bool) -> list[Entry]:
    """Noto or Twemoji: iamcal/emoji-data's list, one 64 px PNG per emoji (skin variants not used)."""
    folder = package_dir(node_modules, source.package)
    installed_version(node_modules, source.package)
    texts, _ = _emojibase(Path(node_modules))
    vendor = source.package.name.removeprefix("emoji-datasource-")  # "google" / "twitter"
    images = folder / "img" / vendor / "64"
    entries = []
    for e in _read_json(folder / EMOJI_DATA):
        if not e.get(f"has_img_{vendor}"):
            continue
        key = normalize_hexcode(e["unified"])
        text = texts.get(key)
        group = (text.group if text and text.group else slugify(e.get("category") or "other"))
        if not _emoji_kept(key, group, include_flags):
            continue
        path = images / e["image"]
        if not path.is_file():
            raise DatasetError(f"{path} is missing (damaged install?): {INSTALL_HINT}")
        label = text.label if text else clean_words(e["name"])
        entries.append(Entry(source.name, key, label, text.tags if text else (), group, e["image"], _png_renderer(path)))
    return entries


def _fluent_entries(source: Source, node_modules: Path, include_flags: bool) -> list[Entry]:
    """Fluent Emoji Flat: chars.json maps code points to icons; a few mirrored aliases are mapped by label."""
    folder = package_dir(node_modules, source.package)
    installed_version(node_modules, source.package)
    texts, by_slug = _emojibase(Path(node_modules))
    icons = _IconSet(folder)
    names: dict[str, str] = {}
    for hexcode, name in _read_json(folder / "chars.json").items():
        if icons.visible(name):
            names.setdefault(normalize_hexcode(hexcode), name)
    # Icons that only exist as aliases (e.g. backhand-index-pointing-right, a mirrored left) have no code
    # point in chars.json; their name is the emojibase label, which gives it.
    for name in sorted(icons.aliases):
        key = by_slug.get(name)
        if key and key not in names and icons.visible(name):
            names[key] = name
    entries = []
    for key, name in names.items():
        text = texts.get(key)
        group = text.group if text and text.group else "other"
        if not _emoji_kept(key, group, include_flags):
            continue
        label = text.label if text else clean_words(name.replace("-", " "))
        entries.append(Entry(source.name, key, label, text.tags if text else (), group, name, icons.renderer(name)))
    return entries


def tabler_kept(name: str, kept_names: set[str] | None = None) -> bool:
    """Whether a Tabler icon is one of the kept ideas (see _TABLER_* above); kept_names for badge variants."""
    parts = name.split("-")
    if parts[0] == "brand" or parts[-1] in _TABLER_DROP_SUFFIXES:
        return False
    if any(p.isdigit() for p in parts):  # numbered variants (message-2, filter-2-x) and numbers
        return False
    if "letter" in parts[1:]:  # enclosed letters (square-letter-a, circle-dotted-letter-b); letter-a stays
        return False
    if kept_names is not None and len(parts) > 1 and parts[-1] in _TABLER_BADGES and "-".join(parts[:-1]) in kept_names:
        return False
    return True


def _tabler_entries(source: Source, node_modules: Path, include_flags: bool) -> list[Entry]:
    """Tabler outline icons: one colour, stroke drawn in a dark grey; trademarks and near-duplicates left out."""
    folder = package_dir(node_modules, source.package)
    installed_version(node_modules, source.package)
    icons = _IconSet(folder)
    first = {n for n in icons.icons if icons.visible(n) and tabler_kept(n)}
    entries = []
    for name in sorted(first):
        if not tabler_kept(name, first):
            continue
        words = name.split("-")
        tags = tuple(dict.fromkeys(w for w in words if w))
        entries.append(Entry(source.name, f"tabler:{name}", " ".join(words), tags, "icon", name,
                             icons.renderer(name, LINE_COLOUR)))
    return entries


_READERS = {"noto": _datasource_entries, "twemoji": _datasource_entries, "fluent": _fluent_entries,
            "tabler": _tabler_entries}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise DatasetError(f"unknown source {name!r}: choose from {', '.join(SOURCES)}") from None


def list_entries(source: str, node_modules: str | Path, include_flags: bool = False) -> list[Entry]:
    """Every kept concept of one source, sorted by concept id (no pixels drawn yet)."""
    spec = get_source(source)
    entries = _READERS[spec.name](spec, Path(node_modules).resolve(), include_flags)
    return sorted(entries, key=lambda e: e.concept_id)


def iter_items(source: str, node_modules: str | Path, size: int = 64, include_flags: bool = False) -> Iterator[Item]:
    """The pictures of one source at size x size (RGB on white), with their words."""
    for entry in list_entries(source, node_modules, include_flags):
        yield entry.item(size)
