"""The rules by which a page's shown answer is compared with the real one (tests/support/doc_examples.py):
each can fail, so an example whose answer changed fails the build. Pure: no stack."""

from __future__ import annotations

import pytest

from tests.support import doc_examples
from tests.support.doc_examples import mismatch

PAGE = """Some prose.

<!-- example: send keep=MESSAGE_ID:data.id -->
```bash
curl -s "$API_URL/x"
```
<!-- answer -->
```json
{"data": {"id": "…", "status": "queued"}}
```

<!-- example: follow wait -->
```bash
curl -s "$API_URL/x/$MESSAGE_ID"
```
<!-- answer -->
```json
{"data": {"id": "$MESSAGE_ID"}}
```

```bash
echo "not an example: no marker"
```

<!-- example: setup-only setup -->
```bash
eval "$(wadispatch demo --env)"
```
"""


def test_markers_find_each_example_its_options_and_its_answer():
    send, follow, setup = doc_examples.parse(PAGE, "page.md")
    assert (send.name, send.line, send.keep, send.wait) == ("send", 3, {"MESSAGE_ID": "data.id"}, False)
    assert send.script == 'curl -s "$API_URL/x"\n' and send.answer == {"data": {"id": "…", "status": "queued"}}
    assert follow.wait and follow.has_answer and setup.setup and not setup.has_answer
    assert str(follow) == "page.md:12 (follow)"


def test_a_marker_must_come_right_before_a_fence_and_options_are_known():
    with pytest.raises(ValueError, match="fenced block"):
        doc_examples.parse("<!-- example: x -->\nprose\n", "p.md")
    with pytest.raises(ValueError, match="unknown example options"):
        doc_examples.parse("<!-- example: x retry -->\n```bash\ntrue\n```\n", "p.md")


def test_any_value_and_prefixes():
    assert mismatch("…", {"anything": [1]}) is None
    assert mismatch("wamid.…", "wamid.HBgL") is None
    assert mismatch("wamid.…", "gBGH") is not None
    assert mismatch("wamid.…", 7) is not None


def test_objects_name_the_keys_that_must_be_there():
    assert mismatch({"status": "sent"}, {"status": "sent", "id": "x"}) is None
    assert "no 'status'" in (mismatch({"status": "sent"}, {"id": "x"}) or "")
    assert "data.status" in (mismatch({"data": {"status": "sent"}}, {"data": {"status": "failed"}}) or "")
    assert mismatch({"a": 1}, [1]) is not None


def test_lists_have_the_shown_length_unless_they_end_open():
    assert mismatch([1, 2], [1, 2]) is None
    assert mismatch([1, 2], [1, 2, 3]) is not None
    assert mismatch([1, "…"], [1, 2, 3]) is None
    assert mismatch([1, "…"], []) is not None
    assert mismatch([{"s": "a"}], [{"s": "b"}]) is not None


def test_kept_values_stand_in_for_their_names():
    expected = doc_examples.substitute({"data": [{"id": "$ID"}, "$UNKNOWN"]}, {"ID": "42"})
    assert expected == {"data": [{"id": "42"}, "$UNKNOWN"]}
    assert doc_examples.value_at({"results": [{"messageId": "m"}]}, "results.0.messageId") == "m"
