"""Prompt templates on the dynamicprompts library: alternatives, wildcards, combinations.

What A1111's sd-dynamic-prompts, ComfyUI and InvokeAI users write works here:

* ``{red|blue|green} car``: one of the alternatives; ``{0.5::red|2::blue}`` weights them;
  ``{2$$a|b|c}`` takes two (joined with ", "), ``{1-3$$ and $$a|b|c}`` one to three joined
  with " and "; alternatives nest (``{a|{b|c}}``).
* ``__colours__``: one line of the wildcard file ``colours.txt`` (or an entry of a YAML file,
  ``__subjects/creature__``); a wildcard's lines may hold templates and wildcards in turn.
* A1111's attention syntax (``(word:1.2)``, ``[word]``, ``[a:b:0.5]``) and ``BREAK`` are left
  untouched for the prompt parser (prompts/syntax.py) that runs later.

Random mode draws each picture's variant from its own seed (a `random.Random` seeded with it, a
fresh one per picture), so a seed always gives the same variant, alone or in any batch.
Combinatorial mode lists the combinations in the library's order, up to a cap.

Wildcard folders, later ones overriding earlier files of the same name: the set shipped with
reverie (`prompts/wildcards/`), then `./wildcards`, then each folder of `REVERIE_WILDCARDS`
(separated like PATH).

A template that cannot expand is a `BadRequest` that names the character or the wildcard (and
the folders searched), raised when the request is validated, before any work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyparsing
from dynamicprompts.commands import (Command, SequenceCommand, VariantCommand, WildcardCommand,
                                     WrapCommand)
from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
from dynamicprompts.parser.parse import parse
from dynamicprompts.wildcards import WildcardManager

from ..errors import BadRequest

__all__ = ["SHIPPED_WILDCARDS", "check_template", "combinations", "is_template", "random_variant",
           "wildcard_folders", "wildcard_manager", "wildcard_names"]

SHIPPED_WILDCARDS = Path(__file__).with_name("wildcards")
WILDCARDS_ENV = "REVERIE_WILDCARDS"
# Wildcards inside wildcard files are followed this deep when checking (a file naming itself
# would otherwise never end).
MAX_WILDCARD_DEPTH = 8
_EMPTY_ALTERNATIVES = re.compile(r"\{[\s|]*\}")


def is_template(text: str) -> bool:
    """Whether `text` uses template syntax at all. Plain prompts skip the library entirely, so a
    prompt without `{` or `__` reaches the model exactly as written (a `$5` in it stays)."""
    return "{" in text or "__" in text


def wildcard_folders() -> list[Path]:
    """The folders wildcards are read from, in order; a later folder's file wins over an
    earlier one's of the same name."""
    folders = [SHIPPED_WILDCARDS, Path.cwd() / "wildcards"]
    folders += [Path(part).expanduser() for part in os.environ.get(WILDCARDS_ENV, "").split(os.pathsep) if part]
    return folders


def wildcard_manager() -> WildcardManager:
    """A manager over every wildcard folder that exists (read afresh: files may have changed)."""
    return WildcardManager(root_map={"": [folder for folder in wildcard_folders() if folder.is_dir()]})


def wildcard_names() -> list[str]:
    """The names `__name__` can take, sorted (`reverie wildcards`)."""
    return sorted(wildcard_manager().get_collection_names())


def check_template(template: str, field: str = "prompt", manager: WildcardManager | None = None) -> None:
    """Raise `BadRequest(field, ...)` when `template` cannot expand: an unclosed `{` or `__`, a
    stray `$`, alternatives with nothing in them, a wildcard no folder holds."""
    if not is_template(template):
        return
    _check_wildcards(_parsed(template, field), manager or wildcard_manager(), field, template, depth=0)


def random_variant(template: str, seed: int, field: str = "prompt", manager: WildcardManager | None = None) -> str:
    """The variant of `template` the seed draws: the same for the same seed, whatever else runs.
    `manager` (default: the folders as they are now) lets a caller read the files once."""
    if not is_template(template):
        return template
    manager = manager or wildcard_manager()
    check_template(template, field, manager)
    generator = RandomPromptGenerator(manager, seed=seed)
    return _expanded(lambda: generator.generate(template, 1)[0], template, field)


def combinations(template: str, limit: int, field: str = "prompt") -> list[str]:
    """Up to `limit` combinations of `template`, in the library's order (the first alternative of
    each choice first, the last choice varying fastest). A plain prompt is its one combination."""
    if not is_template(template):
        return [template]
    check_template(template, field)
    generator = CombinatorialPromptGenerator(wildcard_manager())
    return _expanded(lambda: generator.generate(template, max_prompts=limit), template, field) or [""]


def _parsed(template: str, field: str) -> Command:
    empty = _EMPTY_ALTERNATIVES.search(template)
    if empty:
        raise BadRequest(field, f"the alternatives at character {empty.start() + 1} ({empty.group()!r}) are all "
                                "empty; give at least one, e.g. {red|blue}")
    try:
        return parse(template)
    except pyparsing.ParseBaseException as exc:
        raise BadRequest(field, _syntax_message(template, exc.loc)) from None


def _syntax_message(template: str, position: int) -> str:
    """What is wrong at `position`, where the parser stopped (the start of the broken part)."""
    where = f"character {position + 1}"
    snippet = template[position:position + 20]
    if template.startswith("__", position):
        return (f"the wildcard starting at {where} ({snippet!r}) is never closed; write __name__ "
                "with two underscores on each side")
    if template.startswith("{", position):
        return f"the '{{' at {where} ({snippet!r}) is never closed; add the '}}' that ends its alternatives"
    if template.startswith("$", position):
        return (f"the '$' at {where} ({snippet!r}) starts a template variable (${{name}}); "
                "write the prompt without it, or as ${name=value} first")
    return f"the template cannot be read at {where} ({snippet!r})"


def _children(command: Command) -> list[Command]:
    if isinstance(command, SequenceCommand):
        return list(command.tokens)
    if isinstance(command, VariantCommand):
        return [option.value for option in command.variants]
    if isinstance(command, WrapCommand):
        return [command.wrapper, command.inner]
    return []


def _check_wildcards(command: Command, manager: WildcardManager, field: str, template: str, depth: int) -> None:
    if isinstance(command, WildcardCommand):
        name = command.wildcard
        if isinstance(name, str):  # a name built from variables is only known when sampled
            values = manager.get_values(name)
            if not len(values):
                raise BadRequest(field, _missing_message(name, template))
            if depth < MAX_WILDCARD_DEPTH:
                for value in values.string_values:
                    if is_template(value):
                        nested = _parsed_value(value, name, field)
                        _check_wildcards(nested, manager, field, template, depth + 1)
        return
    for child in _children(command):
        _check_wildcards(child, manager, field, template, depth)


def _parsed_value(value: str, name: str, field: str) -> Command:
    try:
        return parse(value)
    except pyparsing.ParseBaseException as exc:
        raise BadRequest(field, f"the wildcard __{name}__ has a line that cannot expand ({value!r}): "
                                f"{_syntax_message(value, exc.loc)}") from None


def _missing_message(name: str, template: str) -> str:
    at = template.find(f"__{name}__")
    name = name if len(name) <= 60 else name[:60] + "..."
    where = f" (at character {at + 1})" if at >= 0 else ""
    folders = ", ".join(str(folder) for folder in wildcard_folders())
    known = wildcard_names()
    hint = f"; known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}" if known else ""
    return (f"no wildcard file for __{name}__{where}: looked for {name}.txt (or a YAML/JSON entry) "
            f"in {folders}{hint}")


def _expanded(expand, template: str, field: str):
    try:
        return expand()
    except BadRequest:
        raise
    except (KeyError, RecursionError, ValueError) as exc:  # an undefined ${variable}, a loop
        shown = template if len(template) <= 80 else template[:80] + "..."
        raise BadRequest(field, f"the template {shown!r} cannot expand: {str(exc)[:200]}") from None


@dataclass(frozen=True)
class Combinations:
    """The combinations a combinatorial request makes: `variants` (at most the cap) and whether
    the template had more than the cap allowed (`capped`)."""

    variants: tuple[str, ...]
    capped: bool


def capped_combinations(template: str, cap: int, field: str = "prompt") -> Combinations:
    """The first `cap` combinations of `template`, and whether there were more."""
    listed = combinations(template, cap + 1, field)
    return Combinations(tuple(listed[:cap]), len(listed) > cap)
