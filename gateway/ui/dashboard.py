"""``/ui``: the dashboard's page and assets, read from the package (``gateway/ui/static``).

The page itself holds no data and needs no key: everything it shows comes from the admin API
(``/engine/*``, ``/v1/usage``, ``/v1/requests/*``), which asks the browser for the admin key
when it answers 401 or 403. Plain HTML, CSS and ES modules, nothing loaded from elsewhere; the
Content-Security-Policy says so to the browser too.
"""

from __future__ import annotations

from importlib import resources

from litestar import Controller, Response, get
from litestar.params import FromPath

from gateway.errors import NotFound
from gateway.guards import local_page

# Litestar adds "; charset=utf-8" to text/ types itself (said here too, the header had it twice).
_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files, and an upgraded gateway must not serve yesterday's script from a cache.
    "Cache-Control": "no-cache",
}


def asset(name: str) -> Response[bytes]:
    """One file of ``static/``; only plain names of the listed types, so no path escapes it."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    files = resources.files("gateway.ui").joinpath("static")
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in _TYPES:
        raise NotFound(f"no dashboard file {name[:80]!r}")
    # Looked up among the files there rather than opened by name: a 300-character name
    # raised ENAMETOOLONG (a 500), a NUL byte ValueError.
    if name not in {entry.name for entry in files.iterdir() if entry.is_file()}:
        raise NotFound(f"no dashboard file {name[:80]!r}")
    path = files.joinpath(name)
    return Response(path.read_bytes(), media_type=_TYPES[suffix], headers=_HEADERS)


class DashboardController(Controller):
    path = "/ui"
    guards = (local_page,)

    @get("/", include_in_schema=False)
    async def page(self) -> Response[bytes]:
        return asset("index.html")

    @get("/{name:str}", include_in_schema=False)
    async def file(self, name: FromPath[str]) -> Response[bytes]:
        return asset(name)
