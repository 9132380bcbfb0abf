"""The API's documentation as a reader gets it from the running API: /docs and /redoc load nothing
from outside this machine (they work without the internet), need no key, and the OpenAPI document
declares the bearer keys on exactly the routes that refuse a request without one."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Every route under these prefixes needs a key (api_shim/auth.py); no other route does.
KEYED = {"/api/v1/": "FlowEstateKey", "/send-whatsapp": "FlowIQKey"}


class _References(HTMLParser):
    """What a page makes the browser load: src, href, and ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    # Swagger UI is told where the document is in its inline script.
    return parser.found + re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize(
    ("page", "assets"),
    [("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}), ("/redoc", {"redoc.standalone.js"})],
)
def test_docs_pages_load_everything_from_this_api(stack, page, assets):
    with httpx.Client(timeout=10) as http:  # no Authorization header: the docs are open
        response = http.get(stack.api_url + page)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        # Not one address outside this machine: no CDN script or style, no web font, no validator.
        outside = [u for u in re.findall(r"https?://[^\s\"'<>()]+", html) if urlsplit(u).hostname not in LOCAL_HOSTS]
        assert outside == [], outside

        refs = references(html)
        assert assets | {"openapi.json", "favicon.png"} <= {ref.rsplit("/", 1)[-1] for ref in refs}, refs
        for ref in refs:
            url = urljoin(stack.api_url + page, ref)
            assert urlsplit(url).hostname in LOCAL_HOSTS, url
            loaded = http.get(url)
            assert loaded.status_code == 200, (url, loaded.status_code)
            assert len(loaded.content) > 1000, url
            kind = loaded.headers["content-type"]
            if url.endswith(".js"):
                assert "javascript" in kind, (url, kind)
            elif url.endswith(".css"):
                assert kind.startswith("text/css"), (url, kind)
            elif url.endswith(".json"):
                assert loaded.json()["openapi"].startswith("3."), url
        if page == "/docs":
            bundle = http.get(urljoin(stack.api_url, next(r for r in refs if r.endswith("swagger-ui-bundle.js"))))
            # Swagger UI itself, which the page's script calls.
            assert "SwaggerUIBundle" in bundle.text


def _keyed_scheme(path: str) -> str | None:
    return next((scheme for prefix, scheme in KEYED.items() if path.startswith(prefix)), None)


def test_openapi_declares_the_bearer_keys_on_the_keyed_routes_only(stack):
    document = httpx.get(f"{stack.api_url}/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    for name, prefix in (("FlowEstateKey", "fe_k_"), ("FlowIQKey", "fiq_")):
        assert schemes[name]["type"] == "http" and schemes[name]["scheme"] == "bearer", schemes
        assert prefix in schemes[name]["bearerFormat"], schemes
    assert "security" not in document  # no key by default: health, metrics, media and Meta's webhooks are open

    keyed = []
    with httpx.Client(base_url=stack.api_url, timeout=20) as http:
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                scheme = _keyed_scheme(path)
                if scheme is None:
                    assert not operation.get("security"), (method, path, operation.get("security"))
                    continue
                assert operation.get("security") == [{scheme: []}], (method, path, operation.get("security"))
                # What the document says is what the API does: no key, a 401 (and it is documented).
                assert "401" in operation["responses"], (method, path)
                url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
                body = {"json": {}} if method in ("post", "put", "patch") else {}
                answer = http.request(method.upper(), url, params={"tenantId": "any-tenant"}, **body)
                assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
                keyed.append(f"{method.upper()} {path}")
    assert {"POST /api/v1/whatsapp/send", "POST /send-whatsapp", "GET /api/v1/webhooks/endpoints"} <= set(keyed)
