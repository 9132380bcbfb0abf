"""Postgres's DETAIL (it quotes a row's values) is dropped from log text, however many lines it
takes; what follows it (SQLAlchemy's statement line, its link, a chained traceback) stays."""

from models.log_hygiene import DETAIL_DROPPED, drop_database_details


def test_a_value_with_line_breaks_is_dropped_whole():
    text = (
        'IntegrityError: new row for relation "messages" violates check constraint "ck_body"\n'
        "DETAIL:  Failing row contains (1, Hi Anna\nyour code is 4711, +27821234567).\n"
        "[SQL: INSERT INTO messages ...]\n(Background on this error at: https://sqlalche.me/e/21/gkpj)"
    )
    cleaned = drop_database_details(text)
    assert "4711" not in cleaned and "27821234567" not in cleaned and "Anna" not in cleaned
    assert DETAIL_DROPPED in cleaned and "[SQL: INSERT INTO messages ...]" in cleaned
    assert cleaned.endswith("(Background on this error at: https://sqlalche.me/e/21/gkpj)")


def test_in_a_repr_the_escaped_line_breaks_end_it_too():
    text = "OperationalError('x\\nDETAIL:  Key (phone)=(+15550100) already exists.\\n[SQL: UPDATE ...]')"
    cleaned = drop_database_details(text)
    assert "+15550100" not in cleaned and "\\n[SQL: UPDATE ...]')" in cleaned


def test_a_chained_traceback_after_it_stays():
    after = "\n\nThe above exception was the direct cause of the following"
    text = "E: x\nDETAIL:  Key (a)=(b\nc) exists." + after
    assert drop_database_details(text) == f"E: x\n{DETAIL_DROPPED}" + after
