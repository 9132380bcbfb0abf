"""Random methods, paths from the OpenAPI schema, headers, query strings and bodies thrown at the
running API: whatever a client sends, the answer is never a 5xx."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Header values as a client library can send them (no leading or trailing blanks).
header_text = st.text(alphabet=string.ascii_letters + string.digits + "_-.:/ ", max_size=40).map(str.strip)


@pytest.fixture(scope="module")
def paths(stack):
    import httpx

    schema = httpx.get(f"{stack.api_url}/openapi.json").json()
    concrete = []
    for path in schema["paths"]:
        concrete.append(path.replace("{message_id}", "00000000-0000-0000-0000-000000000000").replace(
            "{key}", "a" * 64 + ".pdf"))  # fmt: skip
    return concrete


def test_no_request_gets_a_5xx(stack, api, tenant, paths):
    from sqlalchemy import update

    from models.db import session_scope
    from models.enums import KeyKind
    from models.tables import Organization

    # So the examples reach the routes instead of stopping at 429.
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(rate_limit_per_minute=100000))
    keys = ["", "Bearer " + tenant.key, "Bearer " + tenant.new_key(kind=KeyKind.FLOWIQ), "Bearer fe_k_x", "Basic x"]

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        path=st.sampled_from([*paths, "/api/v1/whatsapp/", "/send-whatsapp/", "/media/../etc"]),
        auth=st.sampled_from(keys),
        query=st.dictionaries(st.sampled_from(["tenantId", "expires", "signature", "x"]), header_text, max_size=3),
        body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)),
        content_type=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
        idem=st.one_of(st.none(), header_text),
    )
    def check(method, path, auth, query, body, content_type, idem):
        headers = {}
        if auth:
            headers["Authorization"] = auth
        if content_type:
            headers["Content-Type"] = content_type
        if idem is not None:
            headers["Idempotency-Key"] = idem
        if "tenantId" in query and path.startswith("/send-whatsapp"):
            query["tenantId"] = tenant.slug
        response = api.http.request(method, path, params=query, content=body, headers=headers)
        assert response.status_code < 500, (method, path, response.status_code, response.text[:300])

    check()
