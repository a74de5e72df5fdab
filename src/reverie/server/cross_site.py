"""Refusing cross-site requests: a page on another site must not change anything in the studio.

A browser attaches the studio's session cookie to any request a page sends it, wherever the page
came from, so a POST, PUT, PATCH or DELETE that a cookie would authenticate (or that needs no
authentication at all, in single-user mode) is taken only from the studio's own pages: its
`Origin` (or, without one, its `Referer`) must name the host the request was sent to, or an origin
in `ServerConfig.trusted_origins`. Browsers send `Origin` on every cross-origin request of these
methods; a request with neither header comes from a program, not from another site's page.
Requests authenticated by an `Authorization: Bearer` or `Basic` header (multi-user mode) carry
no ambient credential a browser adds by itself, and pass.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class CrossSiteRequest(Exception):
    def __init__(self, source: str):
        super().__init__(f"this request came from another site ({source[:200]}); the studio takes changes only "
                         "from its own pages, or from programs with an API key")


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL or origin; None for anything else ("null" included)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def same_origin(source: str, host_header: str, trusted: tuple[str, ...] = ()) -> bool:
    """Whether a page at `source` (an Origin or Referer value) may change things on the server
    reached as `host_header`."""
    origin = _origin(source)
    if origin is None:
        return False
    if origin in {_origin(entry) for entry in trusted}:
        return True
    try:
        host = urlsplit("//" + host_header)
        host_name, host_port = (host.hostname or "").lower(), host.port
    except ValueError:
        return False
    if origin[1] != host_name:
        return False
    # A Host without a port was reached on the default port of whichever scheme the client used
    # (a TLS-terminating proxy may hand the request on as plain http).
    return origin[2] in DEFAULT_PORTS.values() if host_port is None else origin[2] == host_port


def header_authenticated(request: Request) -> bool:
    scheme = request.headers.get("authorization", "").split(" ", 1)[0].lower()
    return scheme in ("bearer", "basic")


def cross_site_guard(exempt_paths: frozenset[str] = frozenset()):
    """A dependency for every route: raises CrossSiteRequest for a state-changing request from
    another site. `exempt_paths` are routes with their own signature that never read a cookie."""

    def refuse_cross_site(request: Request) -> None:
        if request.method not in STATE_CHANGING or request.url.path in exempt_paths:
            return
        config = request.app.state.studio.config
        if config.multi_user and header_authenticated(request):
            return
        source = request.headers.get("origin") or request.headers.get("referer")
        if source is None:
            return
        if not same_origin(source, request.headers.get("host", ""), config.trusted_origins):
            raise CrossSiteRequest(source)

    return refuse_cross_site
