"""Keyframe schedules and prompt timelines: Deforum's meaning, safe evaluation, errors that point."""

import math
import re
import time

import pytest

from reverie.errors import BadRequest
from reverie.methods.video.schedules import parse_schedule, parse_timeline, prompt_at


def refusal(value, name="zoom") -> str:
    with pytest.raises(BadRequest) as caught:
        parse_schedule(value, name).values(40)
    message = str(caught.value)
    assert caught.value.field == name and message.startswith(f"{name}: ") and "\n" not in message
    return message


def position(message: str) -> int:
    return int(re.search(r"at character (\d+)", message).group(1))


# --- meaning ---------------------------------------------------------------------------------

def test_constant_keys_interpolate_linearly_and_hold_after_the_last():
    schedule = parse_schedule("0:(1.0), 10:(2.0)", "zoom")
    assert [schedule.at(frame) for frame in (0, 5, 10, 20)] == [1.0, 1.5, 2.0, 2.0]
    assert schedule.values(3) == pytest.approx([1.0, 1.1, 1.2], abs=1e-15)


def test_before_the_first_key_is_the_first_keys_value():
    schedule = parse_schedule("10:(2), 20:(4)", "angle")
    assert schedule.values(11)[:11] == [2.0] * 11
    assert schedule.at(15) == 3.0


def test_a_t_expression_holds_until_the_next_key_then_values_interpolate_again():
    schedule = parse_schedule("0:(t), 10:(100), 20:(0)", "translation_x")
    assert schedule.values(10) == [float(t) for t in range(10)]  # t on every frame, not interpolated
    assert schedule.at(10) == 100.0 and schedule.at(15) == 50.0 and schedule.at(30) == 0.0


def test_constant_key_interpolates_towards_a_t_expression_keys_value_at_its_frame():
    schedule = parse_schedule("0:(0), 10:(2*t), 20:(5)", "angle")
    assert schedule.at(5) == 10.0  # halfway to 2*10
    assert schedule.at(12) == 24.0 and schedule.at(19) == 38.0 and schedule.at(25) == 5.0


def test_the_last_t_expression_goes_on_for_ever():
    assert parse_schedule("0:(1), 5:(t/2)", "zoom").at(1000) == 500.0


def test_a_sin_expression_equals_its_formula():
    schedule = parse_schedule("0:(1.02+0.02*sin(2*pi*t/20))", "zoom")
    for t in (0, 1, 5, 7, 13, 20, 199):
        assert schedule.at(t) == pytest.approx(1.02 + 0.02 * math.sin(2 * math.pi * t / 20), abs=1e-15)


def test_bare_numbers_and_expressions_are_key_zero():
    for value in (1.02, "1.02", " 1.02 ", "0: 1.02", "0:(1.02)"):
        assert parse_schedule(value, "zoom").values(4) == [1.02] * 4
    assert parse_schedule(3, "angle").at(7) == 3.0
    assert parse_schedule("1+0.5*t", "zoom").values(3) == [1.0, 1.5, 2.0]


def test_whitespace_anywhere_and_every_listed_function():
    text = """ 0 : ( clamp(t, 0, 1) ) ,
               5 : (atan2(1, 1) + asin(0) + acos(1) + atan(0) + tan(0) + cos(0) + sqrt(4) + exp(0) + log(e)
                    + log(8, 2) + log10(100) + abs(-1) + floor(1.5) + ceil(1.5) + round(2.4) + min(3, 1, 2)
                    + max(1, 2) + pow(2, 3) + 7 // 2 + 7 % 4 + 2 ** 3 - -1 + +1) """
    schedule = parse_schedule(text, "zoom")
    assert schedule.values(3) == [0.0, 1.0, 1.0]
    assert schedule.at(5) == pytest.approx(math.pi / 4 + 1 + 2 + 1 + 1 + 3 + 2 + 1 + 1 + 2 + 2 + 1 + 2 + 8 + 3 + 3 + 8
                                           + 1 + 1)


def test_schedules_are_immutable_and_equal_by_text():
    schedule = parse_schedule("0:(1)", "zoom")
    assert schedule == parse_schedule("0:(1)", "zoom") and schedule.text == "0:(1)" and schedule.name == "zoom"
    with pytest.raises(AttributeError):
        schedule.text = "0:(2)"


def test_two_thousand_frames_are_quick():
    schedule = parse_schedule("0:(1.0), 30:(1.04), 60:(1.0+0.02*sin(2*pi*t/20)), 900:(clamp(t/1000, 0, 2))", "zoom")
    started = time.perf_counter()
    values = schedule.values(2000)
    assert len(values) == 2000 and all(math.isfinite(v) for v in values)
    assert time.perf_counter() - started < 1.0


# --- errors that point at the character --------------------------------------------------------

def test_missing_frame_number():
    message = refusal("0:(1.02), x:(1)")
    assert position(message) == 11 and "expected a frame number" in message and "'0:(1.02), x:(1)'" in message
    assert position(refusal("0:(1),")) == 6  # nothing after the last comma


@pytest.mark.parametrize("text, at, words", [
    ("0:(1), 0:(2)", 8, "keyed twice"),
    ("0:(1), 10:(2), 5:(3)", 16, "comes after frame 10"),
])
def test_keys_must_increase(text, at, words):
    message = refusal(text)
    assert position(message) == at and words in message and "keys must increase" in message


def test_unbalanced_parentheses():
    message = refusal("0:(1.02, 10:(2)")
    assert position(message) == 3 and "never closed" in message
    message = refusal("0:(1))")
    assert position(message) == 6 and "without a matching" in message


def test_unknown_name_and_function():
    message = refusal("0:(1), 5:(tt+1)", "angle")
    assert message.startswith("angle: unknown name 'tt' at character 11") and "use numbers, t, pi, e" in message
    message = refusal("0: 1 + foo(t)")
    assert "unknown function 'foo'" in message and position(message) == 8
    assert "call it" in refusal("sin") and "takes 1 argument" in refusal("sin(1, 2)")


def test_attribute_and_dunder_access_is_refused():
    message = refusal("().__class__")
    assert "attribute access '.__class__'" in message and position(message) == 3
    assert "unknown function '__import__'" in refusal("__import__(t)")
    for text in ("'a'", "[1]", "t if t else 1", "lambda: 1", "1 < 2", "True", "1j", "not t", "0:(1); 1", "x = 1"):
        refusal(text)


def test_huge_powers_overflow_at_once():
    started = time.perf_counter()
    message = refusal("9**9**9")
    assert time.perf_counter() - started < 0.5
    assert "too large for a float on frame 0" in message and position(message) == 1
    assert "too large" in refusal("1" + "0" * 400)
    assert "not finite" in refusal("1e308 * 10")


def test_division_by_zero_names_the_frame_and_the_operation():
    schedule = parse_schedule("0:(1), 1:(1/(t-3))", "zoom")  # fine until frame 3
    assert schedule.at(2) == -1.0
    with pytest.raises(BadRequest) as caught:
        schedule.values(10)
    assert "division by zero on frame 3 at character 11" in str(caught.value)  # where 1/(t-3) starts


def test_empty_schedules_and_values():
    assert "empty" in refusal("")
    assert "empty parentheses" in refusal("0:()")
    assert "has no value" in refusal("0:(1), 5:")
    assert "a comma missing" in refusal("0:(1) 10:(2)")


def test_deep_nesting_and_non_numbers_are_refused_politely():
    assert "nested" in refusal("+".join(["1"] * 500))
    assert "cannot read" in refusal("-" * 5000 + "1")
    for value in (float("nan"), float("inf"), 10**400, True, None, [1]):
        refusal(value)


# --- prompt timelines --------------------------------------------------------------------------

def test_timeline_forms_agree():
    expected = [(0, "a forest"), (60, "a city")]
    assert parse_timeline("0: a forest | 60: a city") == expected
    assert parse_timeline(["0: a forest", "60: a city"]) == expected
    assert parse_timeline({"0": "a forest", "60": "a city"}) == expected
    assert parse_timeline(["a forest", "60:a city"]) == expected  # no key: frame 0


def test_a_bar_splits_only_before_a_frame_key():
    assert parse_timeline("0: a:1 | b:0.5 | 60: a city") == [(0, "a:1 | b:0.5"), (60, "a city")]


def test_timelines_are_sorted_and_the_first_key_moves_to_zero():
    assert parse_timeline("60: a city | 30: a forest") == [(0, "a forest"), (60, "a city")]
    assert parse_timeline({"100": "x"}) == [(0, "x")]


def test_timeline_errors():
    with pytest.raises(BadRequest, match=r"frame 0 has two prompts, at character 1 and at character 8"):
        parse_timeline("0: a | 0: b")
    with pytest.raises(BadRequest, match="frame 5 has two prompts, in entry 1 and in entry 2"):
        parse_timeline(["5: a", "5: b"])
    with pytest.raises(BadRequest, match="two prompts"):
        parse_timeline({"0": "a", 0: "b"})
    with pytest.raises(BadRequest, match="prompt for frame 60 at character 8 .* is empty"):
        parse_timeline("0: a | 60:")
    for bad in ("", [], {}, ["a", 3], {"x": "a"}, 5):
        with pytest.raises(BadRequest) as caught:
            parse_timeline(bad, "prompts")
        assert caught.value.field == "prompts"


def test_prompt_at_with_and_without_blend():
    timeline = parse_timeline("0: a | 10: b | 20: c")
    assert prompt_at(timeline, 5, blend=True) == ("a", "b", 0.5)
    assert prompt_at(timeline, 15, blend=True) == ("b", "c", 0.5)
    assert prompt_at(timeline, 10, blend=True) == ("b", "c", 0.0)
    assert prompt_at(timeline, 25, blend=True) == ("c", "c", 0.0)
    assert [prompt_at(timeline, f, blend=False) for f in (0, 9, 10, 30)] == \
        [("a", "b", 0.0), ("a", "b", 0.0), ("b", "c", 0.0), ("c", "c", 0.0)]
    assert prompt_at([(0, "only")], 7, blend=True) == ("only", "only", 0.0)


def test_a_backquoted_value_in_a_prompt_is_its_schedule_on_each_frame():
    timeline = parse_timeline("0: a forest:`1-t/10` | a city:`t/10` | 5: (snow:`0:(0.5), 10:(1.5)`)")
    assert prompt_at(timeline, 3, True) == ("a forest:0.7 | a city:0.3", "(snow:0.8)", 0.6)
    assert prompt_at(timeline, 10, False)[0] == "(snow:1.5)"
    assert prompt_at(parse_timeline("0: (a:`-0.00001`) b"), 0, False)[0] == "(a:0) b"


@pytest.mark.parametrize("prompt, frames, words", [
    ("0: a (b:`1/(t-3)`)", 5, "division by zero on frame 3"),
    ("0: a (b:`1+`)", 5, "cannot read the value"),
    ("0: a (b:`1+t)", 5, "never closed at character 6"),
    ("0: a (b:`__import__(1)`)", 5, "unknown function"),
])
def test_a_wrong_backquoted_value_refuses_the_video_before_its_first_frame(prompt, frames, words):
    from reverie.studio import make_request

    with pytest.raises(BadRequest) as caught:
        make_request({"mode": "video", "motion": "animate", "prompts": [prompt], "frames": frames})
    assert caught.value.field == "prompts" and words in str(caught.value)
    if "frame 3" in words:  # a video that ends before the value fails is made
        make_request({"mode": "video", "motion": "animate", "prompts": [prompt], "frames": 3})
