"""AND sub-prompts, extra-network tags, styles.csv, and the combined parse_prompt."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modules.prompts import NetworkTag, parse_prompt
from modules.prompts.conjunction import split_conjunction
from modules.prompts.network_tags import extract_network_tags
from modules.prompts.styles import (PromptStyle, apply_style_text, apply_styles, delete_style, extract_styles,
                                    load_styles, save_style, save_styles)

SYNTAX = st.lists(st.sampled_from(list("ab :|()[]<>=\\.,15-\n") + ["AND", "BREAK", "<lora:", "{prompt}"])
                  | st.characters(), max_size=40).map("".join)


# --- AND -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat :1.2 AND a dog: -0.5", [("a cat", 1.2), (" a dog", -0.5)]),
    ("a cat:.5", [("a cat", 0.5)]),                 # a single prompt takes a trailing weight too
    ("a cat:2.", [("a cat", 2.0)]),
    ("(cat:1.2)", [("(cat:1.2)", 1.0)]),            # emphasis is not an AND weight
    ("ANDROID and AND", [("ANDROID and", 1.0), ("", 1.0)]),
    ("a\nAND\nb", [("a", 1.0), ("\nb", 1.0)]),
])
def test_split_conjunction(prompt, expected):
    assert split_conjunction(prompt) == expected


# --- network tags ------------------------------------------------------------------------------------

def test_lora_tags_are_removed_and_typed():
    text, tags = extract_network_tags("a <lora:detail:0.8> cat, <lora:style v2:0.5:1.2>, <hypernet:h:0.3>")
    assert text == "a  cat, , "
    assert [(t.kind, t.name, t.te_multiplier, t.unet_multiplier) for t in tags] == [
        ("lora", "detail", 0.8, 0.8), ("lora", "style v2", 0.5, 1.2), ("hypernet", "h", 0.3, 0.3)]
    assert tags[0].text == "<lora:detail:0.8>"


@pytest.mark.parametrize(("tag", "te", "unet", "dyn"), [
    ("<lora:x>", 1.0, 1.0, None),
    ("<lora:x:-0.4>", -0.4, -0.4, None),
    ("<lora:x:1:0:16>", 1.0, 0.0, 16),
    ("<lora:x:unet=0.3:te=0.7>", 0.7, 0.3, None),
    ("<lora:x:0.5:dyn=8>", 0.5, 0.5, 8),
    ("<lora: x :0.5>", 0.5, 0.5, None),
])
def test_tag_arguments(tag, te, unet, dyn):
    text, tags = extract_network_tags(tag)
    assert text == ""
    assert tags == [NetworkTag("lora", "x", te, unet, dyn, tags[0].named, tag)]


@pytest.mark.parametrize("tag", ["<lora:x:abc>", "<lora:x:1:zz>", "<lora::1>", "<lora:x:1:1:1.5>", "<lora:x:nan>",
                                 "<lora x:1>", "<:x:1>"])
def test_malformed_tags_stay_in_the_prompt(tag):
    assert extract_network_tags(f"a {tag} b") == (f"a {tag} b", [])


# --- parse_prompt --------------------------------------------------------------------------------------

def test_parse_prompt_runs_tags_then_and_then_schedule():
    parsed = parse_prompt("<lora:l:0.5>a [cat:dog:2] AND grass:0.3", 4)
    assert parsed.text == "a [cat:dog:2] AND grass:0.3"
    assert [t.name for t in parsed.networks] == ["l"]
    assert [(s.weight, s.schedule) for s in parsed.subprompts] == [
        (1.0, ((2, "a cat"), (4, "a dog"))), (0.3, ((4, " grass"),))]


def test_negative_prompt_has_no_and_and_keeps_tags():
    parsed = parse_prompt("<lora:l:1> ugly AND bad:2 [x:2]", 4, negative=True)
    assert parsed.networks == ()
    assert [(s.weight, s.schedule) for s in parsed.subprompts] == [
        (1.0, ((2, "<lora:l:1> ugly AND bad:2 "), (4, "<lora:l:1> ugly AND bad:2 x")))]


@given(SYNTAX, st.integers(min_value=1, max_value=50), st.booleans())
def test_parsers_never_raise(prompt, steps, negative):
    parsed = parse_prompt(prompt, steps, negative=negative)
    assert parsed.subprompts
    extract_network_tags(prompt)
    extract_styles(prompt, prompt, [PromptStyle("s", prompt, "{prompt}, x")])


# --- styles --------------------------------------------------------------------------------------------

def test_apply_style_text():
    assert apply_style_text("masterpiece, {prompt}, 4k", "cat") == "masterpiece, cat, 4k"
    assert apply_style_text("4k", " cat ") == "cat, 4k"
    assert apply_style_text("4k", "") == "4k"
    assert apply_style_text("", "cat") == "cat"
    assert apply_style_text("{prompt} and {prompt}", "cat") == "cat and cat"


def test_styles_applied_in_order_are_extracted_back():
    styles = [PromptStyle("frame", "photo of {prompt}, film grain", "blurry"),
              PromptStyle("quality", "best quality", "lowres, {prompt}"),
              PromptStyle("unused", "watercolor", "")]
    prompt, negative = apply_styles("a cat", "ugly", styles[:2])
    assert (prompt, negative) == ("photo of a cat, film grain, best quality", "lowres, ugly, blurry")
    assert extract_styles(prompt, negative, styles) == (["frame", "quality"], "a cat", "ugly")


def test_extraction_needs_both_prompts_to_match():
    styles = [PromptStyle("s", "4k", "blurry")]
    assert extract_styles("a cat, 4k", "ugly", styles) == ([], "a cat, 4k", "ugly")


def test_styles_file_round_trip(tmp_path):
    path = tmp_path / "styles.csv"
    assert load_styles(path) == {}
    styles = [PromptStyle("a", 'text, with "quotes"', "neg\nline"), PromptStyle("b", "{prompt}, 4k")]
    save_styles(path, styles)
    assert list(load_styles(path).values()) == styles
    save_style(path, PromptStyle("a", "new"))
    assert [s.prompt for s in load_styles(path).values()] == ["new", "{prompt}, 4k"]
    assert list(delete_style(path, "a")) == ["b"]
    assert list(load_styles(path)) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["styles.csv"]  # no temporary files left


def test_reads_a1111_style_files(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes('\ufeffname,prompt,negative_prompt\n"Old",,\n"Quoted","a, b","c"\nno-neg,x\n,ignored,\n'
                     .encode("utf-8"))
    assert load_styles(path) == {"Old": PromptStyle("Old"), "Quoted": PromptStyle("Quoted", "a, b", "c"),
                                 "no-neg": PromptStyle("no-neg", "x")}
    old = tmp_path / "old.csv"
    old.write_text("name,text\nlegacy,some text\n", encoding="utf-8")
    assert load_styles(old) == {"legacy": PromptStyle("legacy", "some text")}
