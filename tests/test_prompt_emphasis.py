"""Emphasis weights and BREAK: the pieces A1111 produces, with the same float values."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modules.prompts.emphasis import BREAK_MARKER, is_break, parse_emphasis

# A1111's own results (exact floats: the multiplications happen in the same order).
A1111_TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
    ]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_TABLE)
def test_a1111_examples(text, expected):
    assert parse_emphasis(text) == expected


def test_house_example_from_the_reference():
    # house = 1.3 * 1.1 (closed paren) * 1.1 (the unclosed one); "on" = 1/1.1 from [..], times the unclosed 1.1.
    pieces = dict(parse_emphasis("a (((house:1.3)) [on] a (hill:0.5)"))
    assert pieces["house"] == pytest.approx(1.573)
    assert pieces["on"] == pytest.approx(1 / 1.1 * 1.1)
    assert pieces["hill"] == pytest.approx(0.55)
    assert pieces["a "] == 1.0


@pytest.mark.parametrize(("text", "expected"), [
    ("(a:1.5)", [("a", 1.5)]),
    ("(a : 1.5 )", [("a ", 1.5)]),             # the space before ":" is text
    ("(a:-1)", [("a", -1.0)]),
    ("(a:.5) b", [("a", 0.5), (" b", 1.0)]),
    ("[a]", [("a", 1 / 1.1)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("((a:2) b)", [("a", 2 * 1.1), (" b", 1.1)]),
    ("[a (b) c", [("a ", 1 / 1.1), ("b", 1.1 / 1.1), (" c", 1 / 1.1)]),
    ("a) b]", [("a) b]", 1.0)]),                     # closers without openers are text
    ("a:1.2) b", [("a:1.2) b", 1.0)]),               # ':w)' without '(' is text
    ("(a:b)", [("a:b", 1.1)]),                       # ':' not followed by a number closes nothing
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),               # not a number: text (A1111 raises here)
    (r"\\(a)", [("\\", 1.0), ("a", 1.1)]),
    (r"a\b", [("ab", 1.0)]),                         # a backslash before another character disappears
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
])
def test_weights(text, expected):
    assert parse_emphasis(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("a BREAK b", [("a", 1.0), BREAK_MARKER, ("b", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK_MARKER, (",b", 1.0)]),
    ("BREAK", [BREAK_MARKER]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK_MARKER, BREAK_MARKER, ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), BREAK_MARKER, ("b", 1.1)]),   # the marker is never scaled
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("BREAKS break Break", [("BREAKS break Break", 1.0)]),
])
def test_break(text, expected):
    assert parse_emphasis(text) == expected


def test_break_marker_is_distinguishable_from_a_negative_weight():
    pieces = parse_emphasis("(x:-1) BREAK y")
    assert pieces == [("x", -1.0), BREAK_MARKER, ("y", 1.0)]
    assert [is_break(p) for p in pieces] == [False, True, False]


@given(st.lists(st.sampled_from(list("ab :()[]\\.15-\n") + ["BREAK", ":1.2)", " BREAK "]) | st.characters(),
                max_size=40).map("".join))
def test_any_text_parses(text):
    pieces = parse_emphasis(text)
    assert pieces
    for piece_text, weight in pieces:
        assert isinstance(piece_text, str) and isinstance(weight, float)
        assert piece_text or len(pieces) == 1


@given(st.text(alphabet=st.characters(blacklist_characters="()[]:\\"), max_size=60))
def test_plain_text_keeps_weight_one(text):
    pieces = parse_emphasis(text)
    assert all(weight == 1.0 for piece, weight in pieces if not is_break((piece, weight)))
