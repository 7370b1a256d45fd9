"""Bearer-token check on writes, when a token is configured (VSEARCH_API_TOKEN)."""
from __future__ import annotations

import functools
import hmac

from flask import current_app, request

from gateway.errors import ApiError


def require_token(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        token = current_app.config["SETTINGS"].api_token
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken does not tell how much of the token was right
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise ApiError(401, "unauthorized", "this request needs 'Authorization: Bearer <token>'",
                               {"WWW-Authenticate": 'Bearer realm="vsearch"'})
        return view(*args, **kwargs)
    return wrapped
