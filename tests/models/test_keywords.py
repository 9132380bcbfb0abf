"""Opt-out and opt-in keywords (models/keywords.py): the matching rule and the word-list edits.
Pure: no database."""

from __future__ import annotations

import pytest

from models.keywords import (
    DEFAULT_OPT_IN_WORDS,
    DEFAULT_OPT_OUT_WORDS,
    WORD_MAX,
    WORDS_MAX,
    Keyword,
    Match,
    WordsError,
    check_lists,
    check_reply,
    edit_words,
    keyword_form,
    match,
    parse_words,
)

OUT, IN = list(DEFAULT_OPT_OUT_WORDS), list(DEFAULT_OPT_IN_WORDS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", "STOP"),
        ("stop", "STOP"),
        ("  Stop!  ", "STOP"),
        ("STOP.", "STOP"),
        ('"stop"', "STOP"),
        ("¿¡Stop!?", "STOP"),
        ("\tstop\n", "STOP"),
        ("\u200bSTOP\ufeff", "STOP"),  # zero-width space, byte-order mark
        ("\u200fstop\u200e", "STOP"),  # direction marks
        ("\u00a0stop\u3000", "STOP"),  # no-break and ideographic spaces
        ("\uff33\uff34\uff2f\uff30", "STOP"),  # full-width letters (NFKC)
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("quit...", "QUIT"),
        ("STOPALL", "STOPALL"),
    ],
)
def test_the_whole_text_is_an_opt_out_word_in_any_case_spacing_or_punctuation(text, expected):
    assert match(text, OUT, IN) == Match(Keyword.OPT_OUT, expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "!!!",
        "stop sending me offers",
        "please stop",
        "STOP STOP",
        "STOP ALL",  # STOPALL is one word
        "stopp",
        "st op",
        "S.T.O.P",
        "STOP🛑",  # an emoji is not punctuation
        "x" * 10_000 + "stop",
    ],
)
def test_anything_more_or_less_than_the_word_is_not_a_keyword(text):
    assert match(text, OUT, IN) is None


def test_start_and_unstop_opt_back_in():
    assert match(" start ", OUT, IN) == Match(Keyword.OPT_IN, "START")
    assert match("UnStop!", OUT, IN) == Match(Keyword.OPT_IN, "UNSTOP")


def test_unicode_forms_of_one_word_are_one_word():
    words = ["ARRÊT", "straße"]
    assert match("arrêt", words, []) == Match(Keyword.OPT_OUT, "ARRÊT")  # composed ê
    assert match("arre\u0302t", words, []) == Match(Keyword.OPT_OUT, "ARRÊT")  # e + combining circumflex
    assert match("STRASSE", words, []) == Match(Keyword.OPT_OUT, "straße")  # case folding: ß is ss
    # Accents are not dropped: a word without one is another word (an organization adds both).
    assert match("arret", words, []) is None


def test_a_phrase_matches_with_any_spacing_inside():
    assert match("  Darse   de\tbaja. ", ["DARSE DE BAJA"], []) == Match(Keyword.OPT_OUT, "DARSE DE BAJA")
    assert match("darsedebaja", ["DARSE DE BAJA"], []) is None


def test_no_words_match_nothing():
    assert match("STOP", [], []) is None


def test_keyword_form():
    assert keyword_form("  ¡Hola,   Mundo!  ") == "hola, mundo"
    assert keyword_form("\uff33\uff34\uff2f\uff30") == "stop"  # full-width STOP


def test_parse_words_trims_and_drops_empty_entries():
    assert parse_words(" BAJA , Alto,, darse   de baja ,", "--add-opt-out-words") == ["BAJA", "Alto", "darse de baja"]
    assert parse_words("", "--opt-out-words") == []


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("X" * (WORD_MAX + 1), "longer than 64"),
        ("!!!", "no letters or digits"),
        ("ST\x00OP", "control characters"),
        ("ST\u200dOP", "control characters"),
        ("\udcffSTOP", "control characters"),
    ],
)
def test_parse_words_refuses_words_nobody_could_write_alone(value, says):
    with pytest.raises(WordsError, match=says) as error:
        parse_words(value, "--add-opt-out-words")
    assert str(error.value).startswith("--add-opt-out-words: ")


def test_edit_words_replaces_then_adds_then_removes_by_keyword_form():
    assert edit_words(OUT, replace=None, add=["baja", "stop!"], remove=["cancel", "End"]) == [
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "QUIT",
        "baja",
    ]
    assert edit_words(OUT, replace=["Baja", "BAJA"], add=[], remove=[]) == ["Baja"]
    assert edit_words(OUT, replace=[], add=[], remove=[]) == []


def test_check_lists_refuses_a_word_in_both_and_too_many():
    check_lists(OUT, IN)
    with pytest.raises(WordsError, match="STOP is an opt-out word too"):
        check_lists(OUT, ["start", "stop!"])
    with pytest.raises(WordsError, match=f"at most {WORDS_MAX} words"):
        check_lists([f"w{n}" for n in range(WORDS_MAX + 1)], [])


def test_a_word_in_both_lists_opts_out():
    # check_lists keeps this from happening; were it to, stopping is the safe side.
    assert match("stop", ["STOP"], ["stop"]) == Match(Keyword.OPT_OUT, "STOP")


def test_check_reply():
    assert check_reply("Done.\nWrite START to come back.", "--opt-out-reply").startswith("Done.")
    for bad, says in (("  ", "must not be blank"), ("x" * 4097, "at most 4096"), ("a\x00b", "control characters")):
        with pytest.raises(WordsError, match=says):
            check_reply(bad, "--opt-out-reply")
