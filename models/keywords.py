"""Opt-out and opt-in keywords: the defaults, how a contact's text is matched against an
organization's words, and how an operator's word lists are checked. Pure: no database.

A text is a keyword only when the whole of it is one of the words, compared in one form: Unicode
NFKC (so a composed "Ê" and an "E" followed by a combining circumflex are one letter, and a
full-width STOP is STOP), case-folded ("STOP", "Stop" and "stop" are one word; "ß" and
"ss" too), with spaces, punctuation and invisible formatting characters at either end ignored
("Stop!", " STOP. ", "¡BAJA!" match) and runs of spaces inside made one. "stop sending me
offers" is not a keyword, and neither is "STOP" inside a longer text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum

# What a contact writes to stop (or start again) receiving messages, in the spelling every
# WhatsApp and SMS user has met; an organization replaces or extends these (`org update`).
DEFAULT_OPT_OUT_WORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
DEFAULT_OPT_IN_WORDS = ("START", "UNSTOP")

WORD_MAX = 64  # characters, as the operator wrote it
WORDS_MAX = 100  # per list
REPLY_MAX = 4096  # Meta's limit on a text message's body

# A text longer than this cannot be a keyword: it is not even looked at.
_TEXT_MAX = 4 * WORD_MAX


class Keyword(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"


@dataclass(frozen=True)
class Match:
    keyword: Keyword
    word: str  # the organization's word that matched, as the operator wrote it


def _edge(ch: str) -> bool:
    """Ignored at either end of a text: whitespace, punctuation, control and format characters
    (zero-width spaces and joiners, direction marks, a byte-order mark)."""
    category = unicodedata.category(ch)
    return ch.isspace() or category[0] in ("P", "Z") or category in ("Cc", "Cf")


def keyword_form(text: str) -> str:
    """``text`` as keywords are compared: NFKC, case-folded, trimmed of spaces, punctuation and
    invisible characters at both ends, inner runs of whitespace made one space."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    start, end = 0, len(folded)
    while start < end and _edge(folded[start]):
        start += 1
    while end > start and _edge(folded[end - 1]):
        end -= 1
    return " ".join(folded[start:end].split())


def match(text: str, opt_out_words: list[str], opt_in_words: list[str]) -> Match | None:
    """The keyword ``text`` is, or None. The lists never share a word (``check_lists``); were they
    to, opting out wins: messaging someone who asked us to stop is the worse mistake."""
    if len(text) > _TEXT_MAX:
        return None
    form = keyword_form(text)
    if not form:
        return None
    for keyword, words in ((Keyword.OPT_OUT, opt_out_words), (Keyword.OPT_IN, opt_in_words)):
        for word in words:
            if keyword_form(word) == form:
                return Match(keyword, word)
    return None


def _has_surrogates(text: str) -> bool:
    # What a terminal's undecodable bytes become; Postgres cannot store them.
    return any("\ud800" <= ch <= "\udfff" for ch in text)


class WordsError(ValueError):
    """A word list an operator gave is not usable; the message names the option."""


def parse_words(value: str, option: str) -> list[str]:
    """Comma-separated words (a word may be a few words: "DARSE DE BAJA"), each trimmed; an
    empty value is an empty list."""
    words = [" ".join(part.split()) for part in value.split(",")]
    words = [w for w in words if w]
    for word in words:
        if len(word) > WORD_MAX:
            raise WordsError(f"{option}: {word[:20]!r}… is longer than {WORD_MAX} characters")
        if not word.isprintable() or _has_surrogates(word):
            raise WordsError(f"{option}: {word!r} holds control characters")
        if not keyword_form(word):
            raise WordsError(f"{option}: {word!r} has no letters or digits; a contact could never write it alone")
    return words


def edit_words(current: list[str], *, replace: list[str] | None, add: list[str], remove: list[str]) -> list[str]:
    """A list after an `org update`: ``replace`` (when given) first, then ``add``, then ``remove``,
    each compared in keyword form; one entry per form, the first spelling kept, in order."""
    words = list(current if replace is None else replace) + list(add)
    gone = {keyword_form(w) for w in remove}
    kept: dict[str, str] = {}
    for word in words:
        form = keyword_form(word)
        if form not in gone and form not in kept:
            kept[form] = word
    return list(kept.values())


def check_lists(opt_out_words: list[str], opt_in_words: list[str]) -> None:
    """Refuse lists that are too long or share a word (a text must mean one thing)."""
    for option, words in (("--opt-out-words", opt_out_words), ("--opt-in-words", opt_in_words)):
        if len(words) > WORDS_MAX:
            raise WordsError(f"{option}: at most {WORDS_MAX} words (got {len(words)})")
    both = {keyword_form(w) for w in opt_out_words} & {keyword_form(w) for w in opt_in_words}
    if both:
        shared = ", ".join(w for w in opt_out_words if keyword_form(w) in both)
        raise WordsError(f"--opt-in-words: {shared} is an opt-out word too; a word can only mean one of them")


def check_reply(text: str, option: str) -> str:
    """A confirmation reply as it will be sent (a text message): not blank, at most Meta's 4,096
    characters, no control characters but newlines and tabs."""
    if not text.strip():
        raise WordsError(f"{option}: must not be blank (use --clear-{option.removeprefix('--')} to send none)")
    if len(text) > REPLY_MAX:
        raise WordsError(f"{option}: at most {REPLY_MAX} characters (got {len(text)})")
    if _has_surrogates(text) or any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        raise WordsError(f"{option}: must not hold control characters (newlines and tabs are fine)")
    return text
