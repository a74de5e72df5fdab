"""Prompt syntax parsing and text conditioning, with tiny random encoders built in code."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from reverie.errors import PromptSyntaxError
from reverie.prompts import BREAK, Fragment, format_fragments, parse_prompt
from reverie.prompts.conditioning import encode_prompt, encode_prompt_pair, token_count, tokenize_prompt

# ---------------------------------------------------------------------------------------
# Parser


def test_plain_text_is_one_fragment_of_weight_one():
    assert parse_prompt("a photo of a cat, 4k") == [Fragment("a photo of a cat, 4k", 1.0)]


def test_empty_prompt_has_no_fragments():
    assert parse_prompt("") == []


def test_round_brackets_multiply_by_1_1_per_level():
    assert parse_prompt("(cat)") == [Fragment("cat", 1.1)]
    [fragment] = parse_prompt("((cat))")
    assert fragment.weight == pytest.approx(1.1**2)


def test_square_brackets_divide_by_1_1():
    [fragment] = parse_prompt("[cat]")
    assert fragment.weight == pytest.approx(1 / 1.1)
    [fragment] = parse_prompt("[[cat]]")
    assert fragment.weight == pytest.approx(1 / 1.1**2)


def test_explicit_weight_replaces_the_default_multiplier():
    assert parse_prompt("a (cat:1.3) b") == [Fragment("a ", 1.0), Fragment("cat", 1.3), Fragment(" b", 1.0)]
    assert parse_prompt("(cat:2)") == [Fragment("cat", 2.0)]
    assert parse_prompt("(cat: 0.5 )") == [Fragment("cat", 0.5)]
    assert parse_prompt("(cat:-1)") == [Fragment("cat", -1.0)]
    assert parse_prompt("(cat:+.5)") == [Fragment("cat", 0.5)]


def test_explicit_weight_nested_in_groups_multiplies():
    pieces = parse_prompt("((cat:1.3), dog)")
    assert [p.text for p in pieces] == ["cat", ", dog"]
    assert pieces[0].weight == pytest.approx(1.3 * 1.1)
    assert pieces[1].weight == pytest.approx(1.1)
    [fragment] = parse_prompt("(((cat:1.5)))")
    assert fragment.weight == pytest.approx(1.5 * 1.1**2)
    [fragment] = parse_prompt("[(cat:2)]")
    assert fragment.weight == pytest.approx(2 / 1.1)


def test_escaped_brackets_and_backslash_are_literal():
    assert parse_prompt(r"\(cat\) \[dog\] a\\b \:") == [Fragment(r"(cat) [dog] a\b :", 1.0)]
    assert parse_prompt(r"(smile \(happy\))") == [Fragment("smile (happy)", 1.1)]
    # A backslash before anything else is itself text.
    assert parse_prompt(r"C:\dir\n") == [Fragment(r"C:\dir\n", 1.0)]


def test_colon_that_is_not_a_weight_is_text():
    assert parse_prompt("photo: portrait") == [Fragment("photo: portrait", 1.0)]
    assert parse_prompt("(style: oil)") == [Fragment("style: oil", 1.1)]
    assert parse_prompt("(ratio 16:9 frame)") == [Fragment("ratio 16:9 frame", 1.1)]
    assert parse_prompt("(a:b:1.2)") == [Fragment("a:b", 1.2)]
    assert parse_prompt(r"(cat\:1.2)") == [Fragment("cat:1.2", 1.1)]
    # Inside [...] a colon never takes a weight (no prompt scheduling).
    [fragment] = parse_prompt("[a:b:0.5]")
    assert fragment.text == "a:b:0.5"


def test_break_separates_fragments_and_drops_surrounding_space():
    assert parse_prompt("a cat BREAK a dog") == [Fragment("a cat", 1.0), BREAK, Fragment("a dog", 1.0)]
    assert parse_prompt("(a BREAK b:1.2)") == [Fragment("a", 1.2), BREAK, Fragment("b", 1.2)]
    assert parse_prompt("a,BREAK,b") == [Fragment("a,", 1.0), BREAK, Fragment(",b", 1.0)]


def test_break_must_be_an_uppercase_word_of_its_own():
    assert parse_prompt("BREAKFAST break UNBREAKABLE") == [Fragment("BREAKFAST break UNBREAKABLE", 1.0)]


def test_adjacent_equal_weights_merge():
    assert parse_prompt("(a)(b)") == [Fragment("ab", 1.1)]
    assert parse_prompt("(a)(b:1.1) c") == [Fragment("ab", 1.1), Fragment(" c", 1.0)]
    assert parse_prompt("a(b:1)c") == [Fragment("abc", 1.0)]
    assert parse_prompt("a () b") == [Fragment("a  b", 1.0)]


@pytest.mark.parametrize(
    ("prompt", "position", "hint"),
    [
        ("a photo of (cat", 11, "unclosed '(' opened at position 11; add ')'"),
        ("[dog", 0, "unclosed '[' opened at position 0; add ']'"),
        ("x ((a) [b", 7, "unclosed '['"),
        ("a cat)", 5, "')' closes nothing"),
        ("dog] x", 3, "']' closes nothing"),
        ("(a]", 2, "write ')' instead"),
        ("[a)", 2, "write ']' instead"),
        ("(a:1.2.3)", 3, "'1.2.3' is not a weight"),
        ("(a: 1 2)", 4, "'1 2' is not a weight"),
        ("(a:-)", 3, "'-' is not a weight"),
        ("(a:)", 2, "needs a weight"),
    ],
)
def test_syntax_errors_name_the_offending_position(prompt, position, hint):
    with pytest.raises(PromptSyntaxError) as caught:
        parse_prompt(prompt)
    assert caught.value.position == position
    assert hint in str(caught.value)
    assert "escape" in str(caught.value)  # every message offers the literal alternative


ROUND_TRIP_PROMPTS = [
    "",
    "a photo of a cat",
    "((masterpiece)), best quality, [blurry], (red hair:1.3)",
    "(((a:1.5) b) [c]) d",
    r"\(literal\) \[brackets\] and a \\ backslash \: colon",
    "photo: portrait, (style: oil), 16:9",
    "a cat BREAK a dog BREAK (a bird:0.7)",
    "BREAK leading and trailing BREAK",
    "(a :1) BREAK( b:1)",
    "(x:-1) (y:0) (z:0.00001) (w:123456789)",
    "(a:b:1.2)",
    "[a:b:0.5]",
    "((a)(b:1.1))",
    "trailing backslash \\",
]


@pytest.mark.parametrize("prompt", ROUND_TRIP_PROMPTS)
def test_format_round_trips(prompt):
    pieces = parse_prompt(prompt)
    assert parse_prompt(format_fragments(pieces)) == pieces


def _random_prompt(rng: random.Random, depth: int = 0) -> str:
    """A random well-formed prompt from the grammar (the property test, without hypothesis)."""
    parts = []
    for _ in range(rng.randint(0, 4)):
        choice = rng.random()
        if choice < 0.3 and depth < 3:
            inner = _random_prompt(rng, depth + 1)
            parts.append(rng.choice([f"({inner})", f"[{inner}]", f"({inner}:{rng.uniform(-2, 2):.2f})"]))
        elif choice < 0.4:
            parts.append(" BREAK ")
        else:
            texts = ["cat", " ", "a b", ",", ": x", "16:9", r"\(", r"\]", r"\\", r"\:", "BREAKS"]
            parts.append(rng.choice(texts))
    return "".join(parts)


def test_format_round_trips_random_prompts():
    rng = random.Random(1234)
    for _ in range(300):
        prompt = _random_prompt(rng)
        pieces = parse_prompt(prompt)
        assert parse_prompt(format_fragments(pieces)) == pieces, prompt


# ---------------------------------------------------------------------------------------
# Conditioning: a tiny CLIP and a tiny BERT, random weights, vocabularies written here.

WORDS = ["a", "cat", "dog", "photo", "of", "red", "hair", "on", "the", "mat", "sitting", "oil", "style"]
HIDDEN = 32


def _bpe_vocab_and_merges(words):
    """A CLIP-style BPE vocab: every character, mid-word and word-final, plus merges
    that make each of `words` a single token."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789,.!:()":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    return vocab, merges


@pytest.fixture(scope="module")
def clip_tokenizer():
    vocab, merges = _bpe_vocab_and_merges(WORDS)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


@pytest.fixture(scope="module")
def clip_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=1000,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
    )
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory):
    vocab_file = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", *WORDS]) + "\n")
    return BertTokenizer(str(vocab_file))  # no stated max length: model_max_length is ~1e30


@pytest.fixture(scope="module")
def bert_encoder():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=512,
    )
    return BertModel(config).eval()


class RecordingEncoder(torch.nn.Module):
    """Wraps an encoder and remembers the arguments of its last call."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.calls = []

    @property
    def device(self):
        return self.encoder.device

    @property
    def dtype(self):
        return self.encoder.dtype

    def forward(self, input_ids, **kwargs):
        self.calls.append((input_ids.clone(), kwargs))
        return self.encoder(input_ids, **kwargs)


def _tokens(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def _long_prompt(n_words):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def test_short_prompt_is_one_window(clip_tokenizer, clip_encoder):
    states = encode_prompt("a photo of a cat", clip_tokenizer, clip_encoder)
    assert states.shape == (1, 77, HIDDEN)
    assert token_count("a photo of a cat", clip_tokenizer) == (5, 1)


def test_unweighted_prompt_is_the_plain_encoder_output(clip_tokenizer, clip_encoder):
    prompt = "a photo of a cat"
    ids = [0, *_tokens(clip_tokenizer, prompt), 1]
    ids += [clip_tokenizer.pad_token_id] * (77 - len(ids))
    with torch.no_grad():
        expected = clip_encoder(torch.tensor([ids]))[0]
    assert torch.equal(encode_prompt(prompt, clip_tokenizer, clip_encoder), expected)
    # Weight 1.0 written out explicitly is still exactly the plain encoding.
    assert torch.equal(encode_prompt("(a photo:1.0) of (a cat:1)", clip_tokenizer, clip_encoder), expected)


def test_long_prompt_spans_two_windows_without_losing_tokens(clip_tokenizer, clip_encoder):
    prompt = _long_prompt(100)
    all_tokens = _tokens(clip_tokenizer, prompt)
    assert len(all_tokens) == 100
    chunks = tokenize_prompt(prompt, clip_tokenizer)
    assert [len(chunk) for chunk in chunks] == [75, 25]  # no comma to split at: fill the window
    assert [t for chunk in chunks for t in chunk.ids] == all_tokens
    assert token_count(prompt, clip_tokenizer) == (100, 2)
    assert encode_prompt(prompt, clip_tokenizer, clip_encoder).shape == (1, 154, HIDDEN)


def test_chunks_split_after_a_late_comma(clip_tokenizer):
    prompt = _long_prompt(70) + ", " + _long_prompt(30)
    chunks = tokenize_prompt(prompt, clip_tokenizer)
    comma = _tokens(clip_tokenizer, ",")[0]
    assert [len(chunk) for chunk in chunks] == [71, 30]
    assert chunks[0].ids[-1] == comma
    assert [t for chunk in chunks for t in chunk.ids] == _tokens(clip_tokenizer, prompt)


def test_an_early_comma_does_not_shorten_the_chunk(clip_tokenizer):
    prompt = _long_prompt(40) + ", " + _long_prompt(60)
    assert [len(chunk) for chunk in tokenize_prompt(prompt, clip_tokenizer)] == [75, 26]


def test_break_starts_a_new_window(clip_tokenizer, clip_encoder):
    states = encode_prompt("a red cat BREAK a dog", clip_tokenizer, clip_encoder)
    assert states.shape == (1, 154, HIDDEN)
    assert token_count("a red cat BREAK a dog", clip_tokenizer) == (5, 2)
    # Each window is encoded on its own, so the second is the encoding of "a dog".
    alone = encode_prompt("a dog", clip_tokenizer, clip_encoder)
    torch.testing.assert_close(states[:, 77:], alone)
    # BREAK never yields an empty window.
    assert token_count("BREAK a cat BREAK BREAK", clip_tokenizer) == (2, 1)


def test_windows_pad_with_the_tokenizers_pad_token(clip_encoder):
    vocab, merges = _bpe_vocab_and_merges(WORDS)
    sd2_style = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    recorder = RecordingEncoder(clip_encoder)
    encode_prompt("a cat", sd2_style, recorder)
    [(input_ids, kwargs)] = recorder.calls
    cat = _tokens(sd2_style, "cat")[0]
    assert input_ids[0, :4].tolist() == [0, _tokens(sd2_style, "a")[0], cat, 1]
    assert set(input_ids[0, 4:].tolist()) == {sd2_style.pad_token_id}
    assert sd2_style.pad_token_id not in (0, 1)
    assert "attention_mask" not in kwargs  # CLIP is used without a padding mask, as SD was


def test_weight_emphasises_a_token_and_keeps_the_chunk_mean(clip_tokenizer, clip_encoder):
    plain = encode_prompt("a cat on the mat", clip_tokenizer, clip_encoder)
    weighted = encode_prompt("a (cat:1.5) on the mat", clip_tokenizer, clip_encoder)
    cat, other = 2, 4  # positions after the start token: a=1, cat=2, on=3, the=4
    plain_ratio = plain[0, cat].norm() / plain[0, other].norm()
    weighted_ratio = weighted[0, cat].norm() / weighted[0, other].norm()
    assert weighted_ratio.item() == pytest.approx(1.5 * plain_ratio.item(), rel=1e-4)
    # Direction of every state is unchanged: weighting and the rescale are scalars.
    cosine = torch.nn.functional.cosine_similarity(weighted[0], plain[0], dim=-1)
    torch.testing.assert_close(cosine.abs(), torch.ones_like(cosine))
    torch.testing.assert_close(weighted.mean(), plain.mean())
    assert not torch.equal(weighted, plain)


def test_mean_is_preserved_per_window(clip_tokenizer, clip_encoder):
    plain_prompt = _long_prompt(90)
    weighted_prompt = "(" + _long_prompt(30) + ":1.4) " + _long_prompt(60)
    plain = encode_prompt(plain_prompt, clip_tokenizer, clip_encoder)
    weighted = encode_prompt(weighted_prompt, clip_tokenizer, clip_encoder)
    assert weighted.shape == plain.shape == (1, 154, HIDDEN)
    for window in (slice(0, 77), slice(77, 154)):
        torch.testing.assert_close(weighted[:, window].mean(), plain[:, window].mean())


def test_prompt_and_negative_come_out_the_same_shape(clip_tokenizer, clip_encoder):
    cond, uncond = encode_prompt_pair(_long_prompt(100), "", clip_tokenizer, clip_encoder)
    assert cond.shape == uncond.shape == (1, 154, HIDDEN)
    empty = encode_prompt("", clip_tokenizer, clip_encoder)
    torch.testing.assert_close(uncond[:, :77], empty)
    torch.testing.assert_close(uncond[:, 77:], empty)
    torch.testing.assert_close(cond, encode_prompt(_long_prompt(100), clip_tokenizer, clip_encoder))

    cond, uncond = encode_prompt_pair("a cat", "a dog BREAK blurry BREAK red", clip_tokenizer, clip_encoder)
    assert cond.shape == uncond.shape == (1, 231, HIDDEN)


def test_dtype_and_device_of_the_result(clip_tokenizer, clip_encoder):
    states = encode_prompt("a cat", clip_tokenizer, clip_encoder, device="cpu", dtype=torch.float16)
    assert states.dtype == torch.float16 and states.device.type == "cpu"
    assert not states.requires_grad


def test_bert_style_tokenizer_frames_with_cls_sep_and_masks_padding(bert_tokenizer, bert_encoder):
    recorder = RecordingEncoder(bert_encoder)
    states = encode_prompt("a cat, sitting on the mat", bert_tokenizer, recorder)
    assert states.shape == (1, 77, HIDDEN)  # ~1e30 model_max_length falls back to 77
    [(input_ids, kwargs)] = recorder.calls
    text = _tokens(bert_tokenizer, "a cat, sitting on the mat")
    n = len(text) + 2
    assert input_ids[0, :n].tolist() == [bert_tokenizer.cls_token_id, *text, bert_tokenizer.sep_token_id]
    assert set(input_ids[0, n:].tolist()) == {0}
    assert kwargs["attention_mask"][0].tolist() == [1] * n + [0] * (77 - n)


def test_bert_style_long_prompt_and_window_overrides(bert_tokenizer, bert_encoder):
    prompt = _long_prompt(100)
    assert token_count(prompt, bert_tokenizer) == (100, 2)
    assert encode_prompt(prompt, bert_tokenizer, bert_encoder).shape == (1, 154, HIDDEN)
    assert encode_prompt(prompt, bert_tokenizer, bert_encoder, max_length=32).shape == (1, 4 * 32, HIDDEN)
    assert token_count(prompt, bert_tokenizer, max_length=32) == (100, 4)

    bert_tokenizer.model_max_length = 256  # what all-MiniLM-L6-v2 states
    try:
        assert encode_prompt(prompt, bert_tokenizer, bert_encoder).shape == (1, 256, HIDDEN)
    finally:
        bert_tokenizer.model_max_length = int(1e30)


def test_weights_and_pairs_work_with_bert_style_encoders(bert_tokenizer, bert_encoder):
    plain = encode_prompt("a cat on the mat", bert_tokenizer, bert_encoder)
    weighted = encode_prompt("a (cat:1.5) on the mat", bert_tokenizer, bert_encoder)
    assert math.isclose(weighted.mean().item(), plain.mean().item(), rel_tol=1e-4, abs_tol=1e-6)
    cond, uncond = encode_prompt_pair("a cat", _long_prompt(80), bert_tokenizer, bert_encoder)
    assert cond.shape == uncond.shape == (1, 154, HIDDEN)


def test_syntax_errors_surface_from_encoding(clip_tokenizer, clip_encoder):
    with pytest.raises(PromptSyntaxError):
        encode_prompt("a (cat", clip_tokenizer, clip_encoder)


def test_rescale_never_negates_a_chunk():
    from reverie.prompts.conditioning import _apply_weights

    hidden = torch.tensor([[[1.0, 1.0], [1.0, -0.5]]])
    # Weighted mean -0.375 against an original +0.625: rescaling would flip every state.
    weighted = _apply_weights(hidden, torch.tensor([[-1.0, 1.0]]))
    torch.testing.assert_close(weighted, torch.tensor([[[-1.0, -1.0], [1.0, -0.5]]]))
    # Same sign: rescaled back to the original mean.
    weighted = _apply_weights(hidden, torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(weighted.mean(), hidden.mean())


def test_attention_mask_can_be_forced(clip_tokenizer, clip_encoder):
    recorder = RecordingEncoder(clip_encoder)
    encode_prompt("a cat", clip_tokenizer, recorder, use_attention_mask=True)
    [(_, kwargs)] = recorder.calls
    assert kwargs["attention_mask"][0].tolist() == [1] * 4 + [0] * 73
