"""Prompt editing and alternation: schedules as A1111 builds them, and the step each text is used at."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.prompts.schedule import get_prompt_schedule, get_prompt_schedules, text_at_step

# (prompt, steps, expected schedule) — A1111's results for its documented examples.
A1111_TABLE = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 4, [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]),
    ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 5, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
    # The wiki's prompt-editing example at 100 steps.
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", 100, [
         (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
         (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
         (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
         (75, "fantasy landscape with a lake and an oak in background masterful"),
         (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
     ]),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), A1111_TABLE)
def test_a1111_examples(prompt, steps, expected):
    assert get_prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize(("prompt", "steps", "expected"), [
    ("[a:b:0.25]", 10, [(2, "a"), (10, "b")]),        # int(0.25 * 10) = 2: fractions truncate
    ("[a:b:0.99]", 10, [(9, "a"), (10, "b")]),
    ("[a:b:1.0]", 10, [(10, "a")]),                    # "." makes it a fraction: the whole run
    ("[a:b:1]", 10, [(1, "a"), (10, "b")]),            # no "." : step 1
    ("[a:b:15]", 10, [(10, "a")]),                     # past the end: never switches
    ("[a:b:0]", 10, [(10, "b")]),                      # 0 or less: 'to' from the start
    ("[a:b:-3]", 10, [(10, "b")]),
    ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),         # exponent without "." is an absolute step
    ("[a:b: 4 ]", 10, [(4, "a"), (10, "b")]),          # spaces around the number
    ("[a::3] c", 10, [(3, "a c"), (10, " c")]),
    ("[:a:3]", 10, [(3, ""), (10, "a")]),
    ("[a:b:3][c:d:3]", 10, [(3, "ac"), (10, "bd")]),   # equal switch steps share one entry
    ("x [a|b] [c:2]", 3, [(1, "x a "), (2, "x b "), (3, "x a c")]),
    ("(a [b:2])", 4, [(2, "(a )"), (4, "(a b)")]),     # scheduling inside emphasis
    ("[x:(y:1.2):2]", 4, [(2, "x"), (4, "(y:1.2)")]),
])
def test_switch_boundaries(prompt, steps, expected):
    assert get_prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize("prompt", [
    "a [b:c:d:3]",       # too many colons
    "[a|b:3]",           # alternation and a switch in one bracket
    "a|b [c:3]",         # a '|' outside [..|..] makes A1111 use the whole prompt literally
    "(a|b) [c:3]",
    "a [c:3] \\",        # trailing backslash
    "a [b:3x]",          # not a number
    "[a:b:]",
    "",
])
def test_malformed_is_literal(prompt):
    assert get_prompt_schedule(prompt, 7) == [(7, prompt)]


def test_escaped_brackets_are_text_and_keep_their_backslash():
    assert get_prompt_schedule(r"a \[b:3\] c", 10) == [(10, r"a \[b:3\] c")]
    assert get_prompt_schedule(r"[\(x\):3]", 10) == [(3, ""), (10, r"\(x\)")]


def test_hires_pass_timeline():
    # Integers count on from the first pass, fractions from 1.0, over the hires steps.
    assert get_prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert get_prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert get_prompt_schedule("[a:b:13]", 10, hires_steps=8) == [(3, "a"), (8, "b")]


def test_sampler_step_lookup_is_a1111s_zero_based_counter():
    schedule = get_prompt_schedule("[a:b:5]", 10)
    assert [text_at_step(schedule, i) for i in range(10)] == ["a"] * 6 + ["b"] * 4
    alternation = get_prompt_schedule("[a|b]", 6)
    assert [text_at_step(alternation, i) for i in range(6)] == ["a", "a", "b", "a", "b", "a"]
    assert text_at_step(schedule, 50) == "b"


def test_batch_helper_parses_each_distinct_prompt_once():
    schedules = get_prompt_schedules(["[a:b:2]", "c", "[a:b:2]"], 4)
    assert schedules[0] == [(2, "a"), (4, "b")]
    assert schedules[1] == [(4, "c")]
    assert schedules[2] is schedules[0]


def test_deep_nesting_does_not_raise():
    prompt = "(" * 5000 + "x [a:b:2]" + ")" * 5000
    schedule = get_prompt_schedule(prompt, 4)
    assert schedule[-1][0] == 4
    assert schedule[-1][1].count("(") == 5000


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab :|()[]\\.12-\n")) | st.characters(), max_size=40),
       st.integers(min_value=1, max_value=60), st.none() | st.integers(min_value=1, max_value=30))
def test_any_text_gives_a_valid_schedule(prompt, steps, hires_steps):
    schedule = get_prompt_schedule(prompt, steps, hires_steps=hires_steps)
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends))
    assert ends[0] >= 1
    assert ends[-1] == (steps if hires_steps is None else hires_steps)


@given(st.text(alphabet=st.characters(blacklist_characters="[]():|\\"), max_size=60))
def test_text_without_syntax_is_unchanged(prompt):
    assert get_prompt_schedule(prompt, 20) == [(20, prompt)]
