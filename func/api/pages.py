"""Pages for people: GET /explain and GET /drift answer a browser with an HTML page and
everyone else with JSON. Each page is one file of plain HTML and script in func/api/pages/
that calls the JSON API of the server that sent it: no build step, nothing from another
host (a pod may have no internet)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from werkzeug.datastructures import MIMEAccept

FOLDER = Path(__file__).parent / "pages"
# The answer depends on Accept: a cache in between must not give a browser's page to an
# API client or the other way round.
VARY = {"Vary": "Accept"}
HTML_HEADERS = {**VARY, "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"}


def wants_html(accept: MIMEAccept) -> bool:
    """Whether the client prefers HTML to JSON: a browser's Accept does (text/html ranks
    above */*); curl's */*, no Accept header and API clients' application/json do not."""
    return accept.best_match(("application/json", "text/html")) == "text/html"


@cache
def page(name: str) -> bytes:
    """The page func/api/pages/<name>.html."""
    return (FOLDER / f"{name}.html").read_bytes()
