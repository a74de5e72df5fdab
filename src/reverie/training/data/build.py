"""Build the training folder from the pinned npm packages: PNG + caption files, a manifest, attribution.

    out/train/<source>/<slug>.png   the picture (RGB, size x size, transparency on white)
    out/train/<source>/<slug>.txt   caption lines; the first is canonical: "<label>, <style>"
    out/test/...                    the held-out concepts, same layout
    out/manifest.json               size, counts per source and split, test concepts, package versions
    out/ATTRIBUTION.md              the licences and authors of everything inside (ship it with models)

The split is by concept, never by picture: a concept is in test when the sha1 of
"<seed>:<concept id>" falls in the test fraction, so a held-out emoji is held out for Noto,
Twemoji and Fluent alike. The same packages and arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

from .folder import MANIFEST, SPLITS
from .sources import EMOJI_DATASOURCE_NOTE, EMOJIBASE, SOURCES, DatasetError, Entry, get_source, installed_version, list_entries, slugify

__all__ = ["DEFAULT_SOURCES", "DatasetError", "build_dataset", "captions_for", "in_test_split", "file_stem"]

DEFAULT_SOURCES = ("noto", "twemoji", "fluent", "tabler")
ATTRIBUTION = "ATTRIBUTION.md"
FORMAT = "reverie-image-caption-folder/1"

ProgressFn = Callable[[int, int], None]


def in_test_split(concept_id: str, test_fraction: float, seed: int = 0) -> bool:
    """Stable: depends only on the concept id, the fraction and the seed (not on source or order)."""
    digest = hashlib.sha1(f"{seed}:{concept_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def captions_for(label: str, tags: Iterable[str], style: str, key: str = "") -> list[str]:
    """Caption lines for one picture; the first is the canonical "<label>, <style>".

    The others: the bare label, "<label> <style>", "<label>, <style> style", and when the concept has
    tags, 2-4 of them (chosen by a hash of `key`, in their original order) followed by the style.
    """
    lines = [f"{label}, {style}", label, f"{label} {style}", f"{label}, {style} style"]
    pool = [t for t in dict.fromkeys(tags) if t and t != label]
    if len(pool) >= 2:
        rng = random.Random(int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big"))
        chosen = set(rng.sample(range(len(pool)), rng.randint(2, min(4, len(pool)))))
        lines.append(", ".join([t for i, t in enumerate(pool) if i in chosen] + [style]))
    return list(dict.fromkeys(lines))


def file_stem(entry: Entry) -> str:
    """Emoji: "<hexcode>_<label slug>" (e.g. 1f34e_red-apple); icons: the icon name."""
    if entry.concept_id.startswith("tabler:"):
        return entry.name
    return f"{entry.concept_id}_{slugify(entry.label)[:60].strip('-')}".rstrip("_")


def _prepare(out: Path) -> None:
    """Make out ready: a folder this function built before is cleared; any other non-empty folder is refused."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise DatasetError(f"{out} is not empty and holds no {MANIFEST}: choose an empty or new folder")
        for split in SPLITS:
            if (out / split).is_dir():
                shutil.rmtree(out / split)
        for name in (MANIFEST, ATTRIBUTION):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _attribution(sources: list[str]) -> str:
    lines = [
        "# Attribution",
        "",
        "The pictures in this dataset, and the models trained on it, derive from the openly licensed art below.",
        "Changes made: emoji and icons were rasterized or resized to a square, composited onto a white",
        "background and saved as PNG; captions were written from the packages' names, labels and tags.",
        "",
    ]
    emoji = False
    for name in sources:
        s = SOURCES[name]
        p = s.package
        emoji |= s.kind == "emoji"
        lines += [
            f"## {s.style} ({name})",
            "",
            f"- Art: {p.used_for}, from the npm package `{p.name}` {p.version}",
            f"- Authors: {p.authors}",
            f"- Licence: {p.license} ({p.license_url})",
            f"- Home: {p.homepage}",
        ]
        if p.license == "CC-BY-4.0":
            lines.append(f"- {s.style} graphics © {p.authors}, licensed under CC-BY 4.0: "
                         "https://creativecommons.org/licenses/by/4.0/")
        if p.name.startswith("emoji-datasource-"):
            lines.append(f"- Also: {EMOJI_DATASOURCE_NOTE}")
        lines.append("")
    if emoji:
        e = EMOJIBASE
        lines += [
            "## Emoji labels and tags (emojibase)",
            "",
            f"- Text only: {e.used_for}, from the npm package `{e.name}` {e.version}",
            f"- Authors: {e.authors}",
            f"- Licence: {e.license} ({e.license_url})",
            f"- Home: {e.homepage}",
            "",
        ]
    return "\n".join(lines)


def build_dataset(
    node_modules: str | Path,
    out: str | Path,
    size: int = 64,
    sources: Iterable[str] = DEFAULT_SOURCES,
    include_flags: bool = False,
    test_fraction: float = 0.1,
    seed: int = 0,
    progress: Optional[ProgressFn] = None,
) -> dict:
    """Write the dataset folder and return its manifest (also written to out/manifest.json).

    `progress(done, total)` is called once before the first picture and after each one.
    """
    if not isinstance(size, int) or not 8 <= size <= 1024:
        raise DatasetError(f"size must be a whole number of pixels from 8 to 1024, not {size!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be at least 0 and below 1, not {test_fraction!r}")
    names = list(dict.fromkeys(sources))
    if not names:
        raise DatasetError("choose at least one source: " + ", ".join(SOURCES))
    specs = [get_source(n) for n in names]
    node_modules = Path(node_modules)
    out = Path(out)

    entries: dict[str, list[Entry]] = {s.name: list_entries(s.name, node_modules, include_flags) for s in specs}
    packages = {s.package.name: installed_version(node_modules, s.package) for s in specs}
    if any(s.kind == "emoji" for s in specs):
        packages[EMOJIBASE.name] = installed_version(node_modules, EMOJIBASE)
    packages = dict(sorted(packages.items()))

    _prepare(out)
    total = sum(len(v) for v in entries.values())
    done = 0
    if progress:
        progress(done, total)
    counts = {s.name: {split: 0 for split in SPLITS} for s in specs}
    concepts = {split: set() for split in SPLITS}
    for spec in specs:
        stems: set[str] = set()
        for split in SPLITS:
            (out / split / spec.name).mkdir(parents=True, exist_ok=True)
        for entry in entries[spec.name]:
            split = "test" if in_test_split(entry.concept_id, test_fraction, seed) else "train"
            stem = file_stem(entry)
            if stem in stems:  # never expected: concept ids are unique per source
                raise DatasetError(f"two {spec.name} pictures would both be named {stem}")
            stems.add(stem)
            folder = out / split / spec.name
            entry.image(size).save(folder / f"{stem}.png", format="PNG", compress_level=6)
            text = "\n".join(captions_for(entry.label, entry.tags, spec.style, f"{spec.name}:{entry.concept_id}")) + "\n"
            (folder / f"{stem}.txt").write_bytes(text.encode("utf-8"))
            counts[spec.name][split] += 1
            concepts[split].add(entry.concept_id)
            done += 1
            if progress:
                progress(done, total)

    manifest = {
        "format": FORMAT,
        "size": size,
        "include_flags": include_flags,
        "test_fraction": test_fraction,
        "seed": seed,
        "sources": {
            s.name: {
                "package": s.package.name,
                "version": s.package.version,
                "license": s.package.license,
                "style": s.style,
                "native_size": s.native_size if s.native_size else "vector",
                "resampled": bool(s.native_size and s.native_size != size),
                "train": counts[s.name]["train"],
                "test": counts[s.name]["test"],
            }
            for s in specs
        },
        "splits": {split: sum(c[split] for c in counts.values()) for split in SPLITS},
        "images": total,
        "concepts": {"total": len(concepts["train"] | concepts["test"]), "train": len(concepts["train"]),
                     "test": len(concepts["test"])},
        "packages": packages,
        "test_concepts": sorted(concepts["test"]),
    }
    (out / MANIFEST).write_bytes((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    (out / ATTRIBUTION).write_bytes((_attribution(names)).encode("utf-8"))
    return manifest
