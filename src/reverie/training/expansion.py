"""Fit prompt expansion's tables from the pinned npm data: which tags come with which words.

    python -m reverie.training.expansion [--npm data/npm/node_modules] [--out src/reverie/prompts/expansion.json]

Read: the labels and tags (emojibase-data, MIT) of every training concept of the built-in
model (Noto, Twemoji, Fluent and Tabler entries, the test split left out, so the held-out
concepts of benchmarks/prompt_expansion.py are new to the expansion too). Written:

- `related`: for each word of a label or a tag, the words that come with it in the same
  concept (its label words and tags), weighted by co-occurrence over the square root of the
  tag's own frequency (so "face" or "object", which come with everything, do not crowd out
  "fruit" for "apple"), times how close the two words are by the frozen MiniLM text encoder
  (the built-in judge's text side) above MIN_SIMILARITY, so tags that came with a word by
  accident ("apple" -> "meat", "star" -> "singer") drop out; at most TOP_RELATED per word, as
  integer weights;
- `styles`: for each word, in how many emoji concepts and in how many line icons it comes.

Integers only, keys sorted. `expand_prompt` reads only the shipped file, so its words do not
depend on the machine; a rebuild from the same packages gives the same file, except where the
MiniLM's floats round a weight differently on other hardware (rare, and then by one).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from ..outputs.files import atomic_write
from ..prompts.expansion import _STOPWORDS, COLOURS, TABLES, words_of
from .data.build import in_test_split
from .data.sources import list_entries

SOURCES = ("noto", "twemoji", "fluent", "tabler")
TEST_FRACTION = 0.1  # the dataset's split (data/build/mini-64/manifest.json)
TOP_RELATED = 8
MIN_TAG_CONCEPTS = 2  # a tag must come in at least this many training concepts to be offered
MIN_SIMILARITY = 0.3  # a tag whose MiniLM cosine to the word is below this is never offered ("star" -> "singer")
SCALE = 1000


def _usable(word: str) -> bool:
    return len(word) >= 3 and word.isalpha() and word not in _STOPWORDS


def concept_words(node_modules: Path) -> dict[str, tuple[set[str], bool]]:
    """concept id -> (its label words and tag words, whether it is a line icon), training split only."""
    concepts: dict[str, tuple[set[str], bool]] = {}
    for source in SOURCES:
        for entry in list_entries(source, node_modules):
            if in_test_split(entry.concept_id, TEST_FRACTION) or entry.concept_id in concepts:
                continue
            words = {w for text in (entry.label, *entry.tags) for w in words_of(text) if _usable(w)}
            if words:
                concepts[entry.concept_id] = (words, source == "tabler")
    return concepts


def word_similarity(words: list[str]) -> Callable[[str, str], float]:
    """Cosine between two words by the frozen MiniLM text encoder, the built-in judge's text side."""
    from ..models.minilm import load_minilm, sentence_embeddings

    vectors = sentence_embeddings(words, *load_minilm())
    index = {word: i for i, word in enumerate(words)}
    return lambda a, b: float(vectors[index[a]] @ vectors[index[b]])


def fit(concepts: dict[str, tuple[set[str], bool]], similarity: Callable[[str, str], float] | None = None) -> dict:
    frequency = Counter(w for words, _ in concepts.values() for w in words)
    together: dict[str, Counter] = defaultdict(Counter)
    styles: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for words, icon in concepts.values():
        for word in words:
            styles[word][1 if icon else 0] += 1
            for other in words:
                if other != word and frequency[other] >= MIN_TAG_CONCEPTS and other not in COLOURS:
                    together[word][other] += 1
    if similarity is None:
        similarity = word_similarity(sorted(frequency))
    related = {}
    for word in sorted(together):
        scored = []
        for tag, count in together[word].items():
            meaning = similarity(word, tag) - MIN_SIMILARITY
            if meaning > 0:
                scored.append((tag, count / math.sqrt(frequency[tag]) * meaning))
        scored.sort(key=lambda item: (-item[1], item[0]))
        best = [[tag, round(SCALE * score)] for tag, score in scored[:TOP_RELATED]]
        if any(weight > 0 for _, weight in best):
            related[word] = [[tag, weight] for tag, weight in best if weight > 0]
    return {"format": "reverie-expansion/1", "concepts": len(concepts), "related": related,
            "styles": {word: styles[word] for word in sorted(styles)}}  # [emoji concepts, icon concepts]


def build(node_modules: Path, out: Path = TABLES) -> dict:
    data = fit(concept_words(node_modules))
    text = json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    atomic_write(out, lambda partial: partial.write_text(text, encoding="utf-8"))
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm", type=Path, default=Path("data/npm/node_modules"), help="the installed npm packages")
    parser.add_argument("--out", type=Path, default=TABLES, help="where the tables go")
    args = parser.parse_args(argv)
    data = build(args.npm, args.out)
    print(f"{args.out}: {data['concepts']} concepts, {len(data['related'])} words with related tags, "
          f"{args.out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
