"""The signature of a notification: HMAC-SHA256 over "<timestamp>.<raw body>" with ASSISTANT_WEBHOOK_SECRET.

A receiver recomputes it from the `X-Assistant-Timestamp` header and the body exactly as received, compares it
in constant time with `X-Assistant-Signature` (`sha256=<hex>`), and refuses a timestamp too far from its clock
(a replayed old request). `verify` does all three.
"""
from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Assistant-Signature"
TIMESTAMP_HEADER = "X-Assistant-Timestamp"
EVENT_HEADER = "X-Assistant-Event"
DELIVERY_HEADER = "X-Assistant-Delivery"
TOLERANCE_S = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of the HMAC-SHA256 of `timestamp`, a period and the raw body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str | None, body: bytes, now: float | None = None) -> dict[str, str]:
    """The timestamp header, and the signature header when there is a secret."""
    timestamp = str(int(time.time() if now is None else now))
    headers = {TIMESTAMP_HEADER: timestamp}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return headers


def verify(secret: str, body: bytes, timestamp: str | None, signed: str | None, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """Whether a received notification is ours and fresh (for receivers written in Python)."""
    if not timestamp or not signed or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), signed)
