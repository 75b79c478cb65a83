"""Security headers on every response, the bearer-token check, tokens in URLs, ``--token generate``.

Kept apart from the routes because none of it depends on what a route does: the headers are chosen
by path alone, the token check only compares two strings in constant time, and a credential in a
query string is refused before any route (or log line) sees it.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Callable

from fastapi import HTTPException


class _SecurityHeaders:
    """Pure ASGI middleware (does not touch the request body): conservative response headers.

    The upload page and its static files get a strict Content-Security-Policy (same origin only, no
    inline script), which also proves the page uses no external resources; so does ``/docs``.
    """

    PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path in ("/", "/docs") or path.startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if page:
                    headers.append((b"content-security-policy", self.PAGE_CSP.encode()))
                    headers.append((b"x-frame-options", b"DENY"))
                if path.startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: Query parameters that look like credentials: refused on every path, because URLs end up in proxy
#: logs, browser history and Referer headers (the server's own access log never writes query strings).
SECRET_QUERY_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "key", "auth", "authorization",
                                 "bearer", "password", "secret"})


class _RefuseSecretsInUrl:
    """Pure ASGI middleware: a request with a credential-like query parameter is answered 401, unread."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and _has_secret_param(scope.get("query_string", b"")):
            body = (b'{"detail":"send the token in the Authorization header (Authorization: Bearer ...), '
                    b'never in the URL"}')
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="deepfake-detector", error="invalid_request"'),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _has_secret_param(query: bytes) -> bool:
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, max_num_fields=100)
    except ValueError:  # more fields than anyone needs: treat as suspicious
        return True
    return any(name.strip().lower() in SECRET_QUERY_PARAMS for name, _ in pairs)


def check_bearer(authorization: str, token: str) -> None:
    """Accept ``Authorization: Bearer <token>`` (compared in constant time), else raise a 401."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise HTTPException(401, "missing bearer token (send 'Authorization: Bearer <token>')",
                            headers={"WWW-Authenticate": 'Bearer realm="deepfake-detector"'})
    if not hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8")):
        raise HTTPException(401, "invalid bearer token", headers={
            "WWW-Authenticate": 'Bearer realm="deepfake-detector", error="invalid_token"'})


_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


def generate_token() -> str:
    """A random token for ``--token generate`` (URL-safe, 32 bytes of entropy)."""
    token = secrets.token_urlsafe(32)
    assert _TOKEN_RE.match(token)
    return token
