"""Prompt syntax (weights, BREAK) and turning prompts into text-encoder states."""

from reverie.prompts.syntax import BREAK, Break, Fragment, Piece, format_fragments, parse_prompt

__all__ = ["BREAK", "Break", "Fragment", "Piece", "format_fragments", "parse_prompt"]
