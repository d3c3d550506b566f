"""Swagger UI pages from the package's own files (static/swagger-ui, vendored swagger-ui-dist),
for the console's API (/api/docs) and the hub's capture API (/v1/docs).

FastAPI's default docs page loads its script and stylesheet from a CDN and starts them with an
inline script: the console's Content-Security-Policy (no script but from 'self') blocks both,
and the page stays blank. Here the files come from the console itself, and the page is answered
with a CSP that lets exactly its one inline script (the initialiser, hashed) run."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi.openapi.docs import get_swagger_ui_html

ASSETS = Path(str(resources.files("consentsync.web") / "static" / "swagger-ui"))


def swagger_page(*, openapi_url: str, title: str, assets: str, csp: str) -> tuple[bytes, str]:
    """The page's HTML and its Content-Security-Policy: ``csp`` (which must begin with
    ``default-src 'self';``) with a ``script-src`` of 'self' and the hash of each inline script.
    ``openapi_url`` and ``assets`` (where ASSETS are served) are URLs as the page links them:
    relative ones resolve against the page's own URL, wherever the app is mounted."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
    )
    body = bytes(page.body)
    inline = re.findall(r"<script>(.*?)</script>", body.decode(), re.S)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in inline
    )
    if not csp.startswith("default-src 'self';"):
        raise ValueError("the docs page's CSP must begin with default-src 'self';")
    return body, csp.replace("default-src 'self';", f"default-src 'self'; script-src 'self' {hashes};", 1)
