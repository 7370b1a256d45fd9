"""Who may call what.

With a token configured, every /api/v1 route but health, and /metrics, needs
`Authorization: Bearer <token>`: `VSEARCH_API_TOKEN` reads and writes, `VSEARCH_READ_TOKEN` reads
only (a write with it is 403). Tokens are compared with hmac.compare_digest on the whole value.

With no token, the service is for this machine only (`vsearch up` binds loopback): a request is
answered only when its Host is loopback or listed in `VSEARCH_ALLOWED_HOSTS` (a DNS-rebinding page
names its own host), and when its Origin, if sent, is that same host (a page on another site can
POST a form to localhost; the browser says so in Origin).

`g.can_write` tells the views whether the caller holds the write token (or no token is configured):
read-only callers are not shown absolute server paths.
"""
from __future__ import annotations

import functools
import hmac
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request

from gateway.errors import ApiError

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/api/v1/healthz", "/api/v1/readyz"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vsearch"'}


def init_app(app: Flask) -> None:
    app.before_request(_check_access)


def _check_access() -> None:
    settings = current_app.config["SETTINGS"]
    g.can_write = False
    if request.path in OPEN_PATHS:
        return
    if settings.api_token or settings.read_token:
        g.can_write, reads = _granted(settings.api_token), _granted(settings.read_token)  # both, always
        if not (g.can_write or reads) and (request.path.startswith("/api/v1/") or request.path == "/metrics"):
            raise ApiError(401, "unauthorized", "this request needs 'Authorization: Bearer <token>'", _CHALLENGE)
        return
    _check_host_and_origin(settings.allowed_hosts)
    g.can_write = True


def require_token(view):
    """Writes: the write token, when tokens are configured (checked before the view runs)."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not g.get("can_write"):
            raise ApiError(403, "forbidden", "this token may only read; writes need the write token")
        return view(*args, **kwargs)
    return wrapped


def _granted(token: str | None) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of the token was right
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _check_host_and_origin(allowed_hosts: tuple[str, ...]) -> None:
    host = _hostname(request.host)
    if host not in LOOPBACK_HOSTS and host not in {h.lower() for h in allowed_hosts}:
        raise ApiError(403, "bad_host", f"no token is configured, so only loopback hosts are served, not "
                       f"{host!r} (set VSEARCH_API_TOKEN, or list the name in VSEARCH_ALLOWED_HOSTS)")
    origin = request.headers.get("Origin")
    if origin is not None and _hostport(origin) != _hostport(request.host_url):
        raise ApiError(403, "bad_origin", "a request from another site's page is refused")


def _hostname(host: str) -> str:
    return (urlsplit(f"//{host}").hostname or "") if host else ""


def _hostport(url: str) -> tuple[str, int | None] | None:
    try:
        split = urlsplit(url)
        return split.hostname, split.port or {"http": 80, "https": 443}.get(split.scheme)
    except ValueError:
        return None
