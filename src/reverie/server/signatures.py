"""The studio's HMAC-SHA256 signatures: picture links that expire, and purchase events.

A picture link is `/files/ID.png?exp=UNIX_TIME&sig=HMAC(server secret, "files:ID:exp")`: it
works without a login until `exp`, and changing the id or the time breaks the signature.

A purchase event (POST /api/v1/credits/purchases) carries `Reverie-Signature: sha256=HEX`, where
HEX is HMAC-SHA256 of the raw request body under the configured webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math

SIGNATURE_HEADER = "Reverie-Signature"


def link_signature(secret: bytes, image_id: str, expires: str) -> str:
    return hmac.new(secret, f"files:{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def link_expiry(now: float, lifetime_s: int) -> int:
    """When a link made at `now` stops working: at least `lifetime_s` later, rounded up to a
    quarter of it, so that a picture keeps one link (and the browser's cached copy) a while."""
    step = max(1, lifetime_s // 4)
    return math.ceil((now + lifetime_s) / step) * step


def link_signature_matches(secret: bytes, image_id: str, expires: str, signature: str) -> bool:
    return hmac.compare_digest(link_signature(secret, image_id, expires).encode(), signature.encode())


def body_signature(secret: str, body: bytes) -> str:
    """The `Reverie-Signature` value a sender puts on `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_signature_matches(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(body_signature(secret, body).encode(), header.strip().encode())


class BadSignature(Exception):
    """A signed request whose signature is missing or wrong (or that nobody here can sign)."""
