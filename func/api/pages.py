"""Pages for people: GET /explain and GET /drift answer a browser with an HTML page and
everyone else with JSON. Each page is one file of plain HTML and script in func/api/pages/
that calls the JSON API of the server that sent it: no build step, nothing from another
host (a pod may have no internet)."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from werkzeug.datastructures import MIMEAccept

FOLDER = Path(__file__).parent / "pages"
# The answer depends on Accept: a cache in between must not give a browser's page to an
# API client or the other way round.
VARY = {"Vary": "Accept"}
HTML_HEADERS = {
    **VARY,
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# Where a page takes the script every page shares (pages/common.js).
COMMON = b"<!-- common.js -->"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


def wants_html(accept: MIMEAccept) -> bool:
    """Whether the client prefers HTML to JSON: a browser's Accept does (text/html ranks
    above */*); curl's */*, no Accept header and API clients' application/json do not."""
    return accept.best_match(("application/json", "text/html")) == "text/html"


@cache
def page(name: str) -> tuple[bytes, dict[str, str]]:
    """The page func/api/pages/<name>.html and the headers it is sent with."""
    body = (FOLDER / f"{name}.html").read_bytes()
    common = (FOLDER / "common.js").read_bytes()
    body = body.replace(COMMON, b"<script>\n" + common + b"</script>", 1)
    return body, {**HTML_HEADERS, "Content-Security-Policy": policy(body)}


def policy(body: bytes) -> str:
    """The page's Content-Security-Policy: it runs its own inline script and style, known
    by their digests, and nothing else; it fetches from the server that sent it; nothing
    may frame it. Injected markup then runs nothing, and the page cannot be overlaid."""
    digests: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for tag, text in _INLINE.findall(body):
        digests[tag].append("'sha256-" + base64.b64encode(hashlib.sha256(text).digest()).decode() + "'")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(digests[b"script"] or ["'none'"]),
            "style-src " + " ".join(digests[b"style"] or ["'none'"]),
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
