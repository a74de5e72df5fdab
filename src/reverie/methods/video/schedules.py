"""Deforum keyframe schedules and prompt timelines, parsed strictly and evaluated safely.

A schedule gives a number for every frame of a video, written as keyframes ``FRAME:(VALUE)``
separated by commas, e.g. ``"0:(1.0), 30:(1.04), 60:(1.0+0.02*sin(2*pi*t/20))"``:

* frames 0 to 30 go linearly from 1.0 to 1.04, and frames 30 to 60 from 1.04 to the value the
  expression has at t=60 (between keys whose value does not use ``t``, values are interpolated);
* from frame 60 on, the expression is evaluated on every frame with ``t`` the frame number (a
  value using ``t`` holds from its key up to the next key, or for ever after the last key);
* before the first key, the first key's value; after the last constant key, that value.

A bare number or expression (``"1.02"``, ``1.02``, ``"1+0.1*t"``) is the keyframe ``0:(...)``.
Parentheses around a value are optional (``"0: 1.02"``). Keys must increase. A value may use
numbers, ``t``, ``pi``, ``e``, ``+ - * / // % **``, parentheses and the functions in `FUNCTIONS`.
It is read with `ast` against a whitelist and run as small closures over floats, never with
eval: ``9**9**9`` is a quick overflow, not a hang, and every value asked for must be finite.
Errors name the 1-based character position in the schedule, and say what to write instead.

A prompt timeline is keyed prompts, ``"0: a forest | 60: a city"``, a list or a dict of them.
A prompt may hold Deforum's backquoted values, ``"a forest:`1-t/60` | a city:`t/60`"`` or
``"(snow:`0:(0.5), 30:(1.5)`)"``: each is a schedule as above, replaced on every frame by its
value there (`prompt_at`), so a weight can change inside one prompt.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
import string
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable

from reverie.errors import BadRequest

__all__ = ["FUNCTIONS", "Schedule", "check_prompt_values", "parse_schedule", "parse_timeline", "prompt_at"]

# name: (implementation, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int]] = {
    **{name: (getattr(math, name), 1, 1) for name in ("sin", "cos", "tan", "asin", "acos", "atan",
                                                       "sqrt", "exp", "log10")},
    "atan2": (math.atan2, 2, 2), "log": (math.log, 1, 2), "pow": (math.pow, 2, 2), "abs": (abs, 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1), "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "round": (lambda x: float(round(x)), 1, 1), "min": (min, 2, 99), "max": (max, 2, 99),
    "clamp": (lambda x, lo, hi: min(max(x, lo), hi), 3, 3),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: math.pow}  # math.pow: never complex
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# ASCII only, so that ast's (UTF-8 byte) columns are character positions in the text
_ALLOWED_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_.+-*/%(),: \t\r\n")
_MAX_DEPTH = 100  # deeper expressions are refused, so that evaluating one never exhausts the stack
_USE = "use numbers, t, pi, e, + - * / // % **, parentheses and " + ", ".join(FUNCTIONS)
_FRAME_KEY = re.compile(r"\s*(\d+)\s*:")
_IN_PROMPT = re.compile(r"`([^`]*)`")  # Deforum's value in a prompt, `1-t/60`
_KEYFRAMES = "write keyframes as FRAME:(VALUE) separated by commas, e.g. 0:(1.0), 30:(1.02)"

_Evaluate = Callable[[float], float]


class _Failure(Exception):
    """Raised inside an evaluation: `position` is where in the schedule, `problem` what went wrong."""

    def __init__(self, position: int, problem: str):
        self.position, self.problem = position, problem


def _error(name: str, text: str, position: int, problem: str, advice: str) -> BadRequest:
    return BadRequest(name, f"{problem} at character {position + 1} ({_quote(text, position)}); {advice}")


def _quote(text: str, position: int) -> str:
    """`text` quoted on one line; a long one cut to the part around `position`."""
    if len(text) <= 100:
        return repr(text)
    start = max(0, min(position - 40, len(text) - 80))
    return ("..." if start else "") + repr(text[start:start + 80]) + ("..." if start + 80 < len(text) else "")


@dataclass(frozen=True)
class _Key:
    frame: int
    position: int        # 0-based start of the value in the schedule text
    evaluate: _Evaluate  # t -> value, before the finiteness check
    uses_t: bool
    value: float         # the value at its own frame


@dataclass(frozen=True)
class Schedule:
    """A parsed keyframe schedule: `at(frame)` is its value on a frame (see the module docstring)."""

    name: str
    text: str
    _keys: tuple[_Key, ...] = field(repr=False, compare=False)
    _frames: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_frames", tuple(key.frame for key in self._keys))

    def at(self, frame: int) -> float:
        """The value on `frame` (0-based); BadRequest when it is not a finite number."""
        if frame < 0:
            raise ValueError(f"frame {frame} is negative")
        i = bisect_right(self._frames, frame) - 1
        if i < 0:
            return self._keys[0].value
        key = self._keys[i]
        if key.uses_t:
            return _value(self.name, self.text, key.evaluate, key.position, frame)
        if i + 1 == len(self._keys):
            return key.value
        after = self._keys[i + 1]
        weight = (frame - key.frame) / (after.frame - key.frame)
        return (1 - weight) * key.value + weight * after.value  # finite between finite values

    def values(self, frames: int) -> list[float]:
        """``[at(0), ..., at(frames - 1)]``."""
        return [self.at(frame) for frame in range(frames)]


def _value(name: str, text: str, evaluate: _Evaluate, position: int, frame: int) -> float:
    """`evaluate` on `frame`, checked finite; `position` is where its value starts in `text`."""
    try:
        value = evaluate(float(frame))
    except _Failure as failure:
        raise _error(name, text, failure.position, f"{failure.problem} on frame {frame}",
                     "change the value so that it is a finite number on every frame") from None
    if not math.isfinite(value):
        raise _error(name, text, position, f"the value is {value} (not finite) on frame {frame}",
                     "change the value so that it is a finite number on every frame")
    return value


def parse_schedule(value: str | float | int, name: str) -> Schedule:
    """Parse a schedule string, or a plain number meaning that value on every frame."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRequest(name, f"must be a number or a schedule string, not {value!r}; {_KEYFRAMES}")
    if not isinstance(value, str) and not abs(value) <= 1e300:  # also refuses NaN, and ints past float range
        raise BadRequest(name, "must be a finite number no larger than 1e300, like 1.02")
    text = value if isinstance(value, str) else repr(value)
    opened: list[int] = []
    for i, char in enumerate(text):
        if char not in _ALLOWED_CHARACTERS:
            raise _error(name, text, i, f"unexpected {char!r}", _USE)
        if char == "(":
            opened.append(i)
        elif char == ")" and not opened:
            raise _error(name, text, i, "')' without a matching '('", "remove it or add the '(' it closes")
        elif char == ")":
            opened.pop()
    if opened:
        raise _error(name, text, opened[-1], "'(' is never closed", "add the ')' that closes it")
    if not text.strip():
        raise _error(name, text, 0, "the schedule is empty", f"write a number such as 1.0, or {_KEYFRAMES}")
    keys: list[_Key] = []
    for frame, key_start, start, end in _keyframes(name, text):
        if keys and frame <= keys[-1].frame:
            problem = f"frame {frame} is keyed twice" if frame == keys[-1].frame else \
                f"frame {frame} comes after frame {keys[-1].frame}"
            raise _error(name, text, key_start, problem, "keys must increase: " + _KEYFRAMES)
        keys.append(_compile_key(name, text, frame, start, end))
    return Schedule(name, text, tuple(keys))


def _keyframes(name: str, text: str):
    """Yield (frame, key start, value start, value end) per keyframe; the value is ``text[start:end]``."""
    if ":" not in text:
        yield 0, 0, 0, len(text)
        return
    i = 0
    while True:
        number = _FRAME_KEY.match(text, i)
        if not number:
            at = len(text) - len(text[i:].lstrip())
            raise _error(name, text, min(at, len(text) - 1), "expected a frame number", _KEYFRAMES)
        if len(number.group(1)) > 9:
            raise _error(name, text, number.start(1), "the frame number is too large", "use a frame below 10**9")
        i, depth = number.end(), 0
        for end in range(i, len(text) + 1):  # the value runs to the next comma outside parentheses
            if end == len(text) or (text[end] == "," and depth == 0):
                break
            depth += (text[end] == "(") - (text[end] == ")")
        yield int(number.group(1)), number.start(1), i, end
        if end == len(text):
            return
        i = end + 1


def _compile_key(name: str, text: str, frame: int, start: int, end: int) -> _Key:
    source = text[start:end]
    if ":" in source:
        raise _error(name, text, start + source.index(":"), "unexpected ':' (is a comma missing?)", _KEYFRAMES)
    stripped = source.strip()
    start += len(source) - len(source.lstrip())
    if not stripped:
        raise _error(name, text, min(start, len(text) - 1), f"frame {frame} has no value", _KEYFRAMES)
    source = "".join(" " if char.isspace() else char for char in stripped)  # one line: columns are positions
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        offset = getattr(exc, "offset", None) or len(source)
        problem = f"cannot read the value ({getattr(exc, 'msg', None) or 'nested too deeply'})"
        raise _error(name, text, start + min(max(offset - 1, 0), len(source) - 1), problem, _USE) from None
    evaluate, uses_t = _compile(tree.body, name, text, source, start, 0)
    return _Key(frame, start, evaluate, uses_t, _value(name, text, evaluate, start, frame))


def _compile(node: ast.expr, name: str, text: str, source: str, start: int, depth: int) -> tuple[_Evaluate, bool]:
    """Turn a whitelisted expression into a function of t, and whether it uses t."""
    position = start + node.col_offset

    def refuse(problem: str, advice: str = _USE, at: int = position) -> BadRequest:
        return _error(name, text, at, problem, advice)

    def guarded(function: Callable[..., float], parts: list[_Evaluate]) -> _Evaluate:
        def evaluate(t: float) -> float:
            try:
                return function(*[part(t) for part in parts])
            except (ArithmeticError, ValueError) as exc:
                problem = "division by zero" if isinstance(exc, ZeroDivisionError) else \
                    "a result too large for a float" if isinstance(exc, OverflowError) else "a math domain error"
                raise _Failure(position, problem) from None
        return evaluate

    def compile_all(nodes: list[ast.expr]) -> tuple[list[_Evaluate], bool]:
        compiled = [_compile(part, name, text, source, start, depth + 1) for part in nodes]
        return [evaluate for evaluate, _ in compiled], any(uses_t for _, uses_t in compiled)

    if depth > _MAX_DEPTH:
        raise refuse(f"the value is nested more than {_MAX_DEPTH} deep", "write a simpler value")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        try:
            constant = float(node.value)
        except OverflowError:
            raise refuse(f"the number {ast.get_source_segment(source, node)} is too large", _USE) from None
        return (lambda t: constant), False
    if isinstance(node, ast.Name):
        if node.id == "t":
            return (lambda t: t), True
        if node.id in _CONSTANTS:
            constant = _CONSTANTS[node.id]
            return (lambda t: constant), False
        if node.id in FUNCTIONS:
            raise refuse(f"{node.id} is a function", f"call it, as in {node.id}(t)")
        raise refuse(f"unknown name {node.id!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        parts, uses_t = compile_all([node.left, node.right])
        return guarded(_BINARY[type(node.op)], parts), uses_t
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        parts, uses_t = compile_all([node.operand])
        return guarded(_UNARY[type(node.op)], parts), uses_t
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in FUNCTIONS:
            raise refuse(f"unknown function {node.func.id!r}")
        function, fewest, most = FUNCTIONS[node.func.id]
        if not fewest <= len(node.args) <= most:
            wanted = str(fewest) if fewest == most else f"{fewest} or more" if most > 3 else f"{fewest} or {most}"
            raise refuse(f"{node.func.id} takes {wanted} argument{'s' * (most > 1)}, not {len(node.args)}")
        parts, uses_t = compile_all(node.args)
        return guarded(function, parts), uses_t
    if isinstance(node, ast.Attribute):
        dot = source.index(".", node.value.end_col_offset)
        raise refuse(f"attribute access '.{node.attr}' is not allowed", at=start + dot)
    if isinstance(node, ast.Tuple) and not node.elts:
        raise refuse("empty parentheses", "write a value inside them, e.g. 0:(1.0)")
    raise refuse(f"{ast.get_source_segment(source, node)!r} is not allowed")


def parse_timeline(value: str | list[str] | dict, name: str = "prompts") -> list[tuple[int, str]]:
    """Keyed prompts -> [(frame, prompt), ...] sorted by frame, the first at frame 0.

    ``"0: a forest | 60: a city"``: a ``|`` splits only where a key ``N:`` follows, so a weighted
    ``a:1 | b:0.5`` stays one prompt. A list holds one entry per item (a list of one is read as
    the string it holds); a dict maps frames to prompts
    (Deforum's JSON). An entry without a key is frame 0. The first prompt holds from the start.
    """
    quoted = ""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # one argument holds the whole timeline: "0: a forest | 60: a city"
    if isinstance(value, str):
        cuts = [0] + [m.end() for m in re.finditer(r"\|(?=\s*\d{1,9}\s*:)", value)] + [len(value) + 1]
        pieces = [value[a:b - 1] for a, b in zip(cuts, cuts[1:])]
        starts = [a + len(piece) - len(piece.lstrip()) for a, piece in zip(cuts, pieces)]
        entries = [(*_timeline_entry(piece), f"at character {a + 1}") for piece, a in zip(pieces, starts)]
        quoted = f" in {_quote(value, starts[-1])}"
    elif isinstance(value, (list, tuple)):
        for i, entry in enumerate(value):
            if not isinstance(entry, str):
                raise BadRequest(name, f"entry {i + 1} is {entry!r}, not a prompt; give text such as \"60: a city\"")
        entries = [(*_timeline_entry(entry), f"in entry {i + 1}") for i, entry in enumerate(value)]
    elif isinstance(value, dict):
        entries = []
        for key, prompt in value.items():
            if isinstance(key, bool) or not re.fullmatch(r"\s*\d{1,9}\s*", str(key)) or not isinstance(prompt, str):
                raise BadRequest(name, f"the entry {key!r}: {prompt!r} is not a frame and a prompt; "
                                 'write {"0": "a forest", "60": "a city"}')
            entries.append((int(key), prompt.strip(), f"under the key {key!r}"))
    else:
        raise BadRequest(name, 'must be a prompt timeline such as "0: a forest | 60: a city", a list or a dict')
    if not entries:
        raise BadRequest(name, 'is empty; give at least one prompt, e.g. "0: a forest | 60: a city"')
    for frame, prompt, place in entries:
        if not prompt:
            raise BadRequest(name, f"the prompt for frame {frame} {place}{quoted} is empty; write one or drop the key")
        _with_values(prompt, frame, name)  # its backquoted values read (and valid on their own frame)
    entries.sort(key=lambda entry: entry[0])
    for (frame, _, first), (later, _, second) in zip(entries, entries[1:]):
        if frame == later:
            raise BadRequest(name, f"frame {frame} has two prompts, {first} and {second}{quoted}; give each frame one")
    return [(0 if i == 0 else frame, prompt) for i, (frame, prompt, _) in enumerate(entries)]


def _timeline_entry(text: str) -> tuple[int, str]:
    """``"60: a city"`` -> (60, "a city"); an entry without a key is frame 0."""
    key = re.match(r"\s*(\d{1,9})\s*:(.*)", text, re.DOTALL)
    return (int(key.group(1)), key.group(2).strip()) if key else (0, text.strip())


def prompt_at(timeline: list[tuple[int, str]], frame: int, blend: bool) -> tuple[str, str, float]:
    """(prompt before, prompt after, weight of the one after) on `frame` of a parsed timeline.

    The prompt before is the latest key at or before `frame`, the one after the next key's (the
    same prompt after the last key). With `blend` the weight goes linearly from 0 to 1 between the
    two keys; without it, it is always 0.
    """
    i = max(bisect_right([key for key, _ in timeline], frame) - 1, 0)
    (key, before), (next_key, after) = timeline[i], timeline[min(i + 1, len(timeline) - 1)]
    before, after = _with_values(before, frame), _with_values(after, frame)
    if not blend or next_key == key:
        return before, after, 0.0
    return before, after, min(max((frame - key) / (next_key - key), 0.0), 1.0)


def check_prompt_values(timeline: list[tuple[int, str]], frames: int, name: str = "prompts") -> None:
    """Every backquoted value of the timeline's prompts is a finite number on every frame (a
    request is refused before its first frame, not on the frame where one fails)."""
    for _, prompt in timeline:
        if "`" in prompt:
            for frame in range(frames):
                _with_values(prompt, frame, name)


def _with_values(prompt: str, frame: int, name: str = "prompts") -> str:
    """`prompt` with each backquoted schedule replaced by its value on `frame` (at most 4 decimals)."""
    if "`" not in prompt:
        return prompt
    if prompt.count("`") % 2:
        at = prompt.rindex("`")
        raise BadRequest(name, f"a ` is never closed at character {at + 1} ({_quote(prompt, at)}); put a value "
                               "between two, as in (snow:`1+t/60`)")
    return _IN_PROMPT.sub(lambda value: _number(_prompt_value(value.group(1), name).at(frame)), prompt)


@functools.lru_cache(maxsize=256)
def _prompt_value(text: str, name: str) -> Schedule:
    return parse_schedule(text, name)


def _number(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
