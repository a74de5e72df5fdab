"""The prompt attention syntax SD users know, parsed strictly.

Grammar, as written by users:

* ``(words)`` multiplies the weight of ``words`` by 1.1, ``[words]`` divides it by 1.1;
  groups nest, and nesting multiplies (``((words))`` is 1.21).
* ``(words:1.3)`` multiplies by 1.3 instead of 1.1. The number may carry a sign and a
  fraction (``-1``, ``.5``, ``2.``); exponents are not part of the syntax.
* A colon that is not followed by such a number and the closing ``)`` is plain text
  (``photo: portrait``, ``(style: oil)``, ``16:9``). Inside ``[...]`` a colon is always
  text: we do not implement prompt scheduling (``[a:b:0.5]``).
* ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` and ``\\:`` are the literal characters. Any
  other backslash is itself literal.
* ``BREAK`` in capitals, as a word of its own, ends the current text-encoder chunk.
  Whitespace around it is dropped.

Unlike the original webui, which quietly closes brackets it cannot match, every
unbalanced or malformed bracket is a `PromptSyntaxError` naming the offending
character, because a silently re-weighted prompt is much harder to debug than an
error message.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Union

from reverie.errors import PromptSyntaxError

__all__ = ["BREAK", "Break", "Fragment", "Piece", "format_fragments", "parse_prompt"]

ROUND_MULTIPLIER: Final = 1.1
SQUARE_MULTIPLIER: Final = 1 / 1.1

_ESCAPABLE = frozenset("()[]\\:")
_CLOSER = {"(": ")", "[": "]"}
_OPENER = {")": "(", "]": "["}
# After a colon inside "(...)": the characters a weight could be written with, then ")".
# Only when this matches is the colon a weight separator; otherwise it is text.
_WEIGHT_CANDIDATE = re.compile(r"([\s\d.+\-]*)\)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_BREAK_WORD = "BREAK"


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text and the attention weight its tokens get."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Break:
    """The ``BREAK`` keyword: the text after it starts a new text-encoder chunk.

    A type of its own rather than a Fragment with a magic weight, because every weight
    (zero and negative ones included) is a legal Fragment weight.
    """

    def __repr__(self) -> str:
        return "BREAK"


BREAK: Final = Break()
Piece = Union[Fragment, Break]


def parse_prompt(text: str) -> list[Piece]:
    """Parse a prompt into weighted `Fragment`s and `BREAK` markers, in order.

    Adjacent fragments of equal weight are merged and empty fragments dropped, so an
    empty prompt gives ``[]``. Raises `PromptSyntaxError` for unbalanced brackets and
    malformed weights.
    """
    pieces = _Parser(text).parse()
    while True:  # trimming can empty a fragment, which lets its neighbours merge
        normalised = _merge(_trim_around_breaks(pieces))
        if normalised == pieces:
            return normalised
        pieces = normalised


def format_fragments(pieces: list[Piece]) -> str:
    """Write pieces back as prompt text that `parse_prompt` reads as the same pieces.

    Each weighted fragment becomes one flat ``(text:weight)`` group with the exact
    weight, so ``parse_prompt(format_fragments(parse_prompt(p))) == parse_prompt(p)``.
    """
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, Break):
            out.append(f" {_BREAK_WORD} ")
        elif piece.weight == 1.0:
            out.append(_escape(piece.text))
        else:
            out.append(f"({_escape(piece.text)}:{_format_weight(piece.weight)})")
    return "".join(out)


@dataclass
class _Group:
    opener: str  # "(" or "["
    position: int
    first_piece: int  # index of the first piece written inside the group


class _Parser:
    """One left-to-right pass; a group's multiplier is applied to its pieces when it closes."""

    def __init__(self, text: str):
        self.text = text
        self.pieces: list[list] = []  # [text, weight] pairs, or [BREAK]
        self.groups: list[_Group] = []
        self.buffer: list[str] = []
        self.pos = 0

    def parse(self) -> list[Piece]:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\":
                self._escape()
            elif char in _CLOSER:
                self._flush()
                self.groups.append(_Group(char, self.pos, len(self.pieces)))
                self.pos += 1
            elif char in _OPENER:
                self._close(char)
            elif char == ":" and self._weight_follows():
                pass  # _weight_follows consumed ":weight)" and closed the group
            elif self._break_here():
                self._break()
            else:
                self.buffer.append(char)
                self.pos += 1
        self._flush()
        if self.groups:
            self._fail_unclosed(self.groups[-1])
        return [BREAK if piece[0] is BREAK else Fragment(piece[0], piece[1]) for piece in self.pieces]

    def _escape(self) -> None:
        following = self.text[self.pos + 1 : self.pos + 2]
        if following and following in _ESCAPABLE:
            self.buffer.append(following)
            self.pos += 2
        else:
            self.buffer.append("\\")
            self.pos += 1

    def _close(self, closer: str) -> None:
        if not self.groups:
            self._fail(
                f"'{closer}' closes nothing; remove it, or escape it as '\\{closer}' to keep it as text"
            )
        group = self.groups[-1]
        if group.opener != _OPENER[closer]:
            expected = _CLOSER[group.opener]
            self._fail(
                f"'{closer}' cannot close the '{group.opener}' opened at position {group.position}; "
                f"write '{expected}' instead, or escape it as '\\{closer}'"
            )
        multiplier = ROUND_MULTIPLIER if closer == ")" else SQUARE_MULTIPLIER
        self._close_group(multiplier)
        self.pos += 1

    def _weight_follows(self) -> bool:
        """At a colon: if ":number)" closes the innermost "(" group, consume and apply it."""
        if not self.groups or self.groups[-1].opener != "(":
            return False
        match = _WEIGHT_CANDIDATE.match(self.text, self.pos + 1)
        if match is None:
            return False
        written = match.group(1).strip()
        if not written:
            self._fail(
                "':' before ')' needs a weight, e.g. '(words:1.2)'; "
                "escape it as '\\:' to keep the colon as text"
            )
        if not _NUMBER.fullmatch(written):
            start = self.pos + 1 + (len(match.group(1)) - len(match.group(1).lstrip()))
            self._fail(
                f"'{written}' is not a weight; write a number such as 1.2 or -0.5, "
                "or escape the colon as '\\:' to keep it as text",
                start,
            )
        self._close_group(float(written))
        self.pos = match.end()
        return True

    def _break_here(self) -> bool:
        text, pos = self.text, self.pos
        if not text.startswith(_BREAK_WORD, pos):
            return False
        before = text[pos - 1] if pos > 0 else " "
        after_pos = pos + len(_BREAK_WORD)
        after = text[after_pos] if after_pos < len(text) else " "
        return not _is_word_char(before) and not _is_word_char(after)

    def _break(self) -> None:
        self._flush()
        self.pieces.append([BREAK])
        self.pos += len(_BREAK_WORD)

    def _close_group(self, multiplier: float) -> None:
        self._flush()
        group = self.groups.pop()
        for piece in self.pieces[group.first_piece :]:
            if piece[0] is not BREAK:
                piece[1] *= multiplier

    def _flush(self) -> None:
        if self.buffer:
            self.pieces.append(["".join(self.buffer), 1.0])
            self.buffer = []

    def _fail_unclosed(self, group: _Group) -> None:
        closer = _CLOSER[group.opener]
        self._fail(
            f"unclosed '{group.opener}' opened at position {group.position}; "
            f"add '{closer}' or escape it as '\\{group.opener}'",
            group.position,
        )

    def _fail(self, message: str, position: int | None = None) -> None:
        raise PromptSyntaxError(self.text, self.pos if position is None else position, message)


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _trim_around_breaks(pieces: list[Piece]) -> list[Piece]:
    """Drop whitespace next to BREAK: it only separates the keyword, it is not prompt text."""
    trimmed = list(pieces)
    for index, piece in enumerate(trimmed):
        if not isinstance(piece, Fragment):
            continue
        text = piece.text
        if index > 0 and isinstance(trimmed[index - 1], Break):
            text = text.lstrip()
        if index + 1 < len(trimmed) and isinstance(trimmed[index + 1], Break):
            text = text.rstrip()
        trimmed[index] = Fragment(text, piece.weight)
    return trimmed


def _merge(pieces: list[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, Fragment):
            if not piece.text:
                continue
            previous = merged[-1] if merged else None
            # isclose: (a)(b:1.1) reaches 1.1 by different float paths; both mean 1.1.
            if isinstance(previous, Fragment) and math.isclose(previous.weight, piece.weight):
                merged[-1] = Fragment(previous.text + piece.text, previous.weight)
                continue
        merged.append(piece)
    return merged


def _escape(text: str) -> str:
    # Colons need no escape: inside a written group the text is followed by ":weight)",
    # so a colon in it is never followed by only a number and ")".
    return "".join("\\" + char if char in _ESCAPABLE and char != ":" else char for char in text)


def _format_weight(weight: float) -> str:
    # repr is the shortest text that reads back as the same float; Decimal spells it
    # without an exponent, which the syntax does not allow.
    return format(Decimal(repr(weight)), "f")
