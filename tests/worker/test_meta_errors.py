import pytest

from worker.meta_errors import (
    AccountBroken,
    LongPause,
    MarketingLimited,
    PairThrottled,
    Permanent,
    TemplateRefused,
    TemplateUnusable,
    Throttled,
    Transient,
    class_for,
    error_from_response,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (130429, Throttled),
        (4, Throttled),
        (80007, Throttled),
        (133016, Throttled),
        (131056, PairThrottled),
        (1, Transient),
        (2, Transient),
        (131000, Transient),
        (131016, Transient),
        (131053, Transient),
        (131048, LongPause),
        (131049, MarketingLimited),
        (131064, LongPause),
        (100, Permanent),
        (131026, Permanent),
        (131047, Permanent),
        (131050, Permanent),
        (131051, Permanent),
        (132000, TemplateRefused),
        (132001, TemplateRefused),
        (132005, TemplateRefused),
        (132007, TemplateRefused),
        (132012, TemplateRefused),
        (132015, TemplateUnusable),
        (132016, TemplateUnusable),
        (0, AccountBroken),
        (3, AccountBroken),
        (10, AccountBroken),
        (190, AccountBroken),
        (200, AccountBroken),
        (299, AccountBroken),
        (368, AccountBroken),
        (131031, AccountBroken),
        (131042, AccountBroken),
        (133010, AccountBroken),
        (130497, AccountBroken),
    ],
)
def test_every_documented_code_has_its_family(code, expected):
    assert class_for(code, 400) is expected


@pytest.mark.parametrize(
    ("status", "expected"), [(429, Throttled), (500, Transient), (503, Transient), (404, Permanent)]
)
def test_unknown_codes_fall_back_on_the_http_status(status, expected):
    assert class_for(None, status) is expected
    assert class_for(999999, status) is expected


def test_132017_is_outside_the_template_range():
    assert class_for(132017, 400) is Permanent and class_for(132017, 500) is Transient


def test_error_from_meta_json_keeps_code_title_and_details():
    body = {
        "error": {
            "message": "(#131026) Message undeliverable",
            "type": "OAuthException",
            "code": 131026,
            "error_data": {"messaging_product": "whatsapp", "details": "Receiver is incapable"},
            "fbtrace_id": "abc",
        }
    }
    error = error_from_response(400, body)
    assert isinstance(error, Permanent)
    assert (error.code, error.title, error.details, error.error_code) == (
        131026,
        "(#131026) Message undeliverable",
        "Receiver is incapable",
        "131026",
    )


def test_non_json_answer_is_classified_by_status():
    error = error_from_response(502, "<html>bad gateway</html>", retry_after_s=3)
    assert isinstance(error, Transient) and error.error_code == "HTTP_502" and error.retry_after_s == 3


def test_template_errors_are_permanent_failures_with_metas_title():
    error = error_from_response(
        400, {"error": {"code": 132015, "message": "Template is Paused", "error_data": {"details": "paused"}}}
    )
    # Callers that handle permanent failures handle these unchanged; the class says more.
    assert isinstance(error, TemplateUnusable) and isinstance(error, TemplateRefused) and isinstance(error, Permanent)
    assert (error.error_code, error.title, error.error_class) == ("132015", "Template is Paused", "template_unusable")
    refused = error_from_response(400, {"error": {"code": 132000, "message": "Number of parameters does not match"}})
    assert type(refused) is TemplateRefused and refused.error_class == "template"
